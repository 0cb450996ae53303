"""The artifact manifest (``manifest.json``): its typed schema, and the one reader and writer.

Every artifact file name is defined here, once. ``Manifest`` is the whole file as immutable,
validated records; nothing else parses or writes ``manifest.json``. Changes are made with the
``with_*`` methods, which return a new, re-validated manifest, and written with ``write``
(atomic: a reader sees the old file or the new one, never a mix).

JSON layout (format version 1):

- ``format_version`` 1, ``created``, ``category``, ``object_name``, ``model`` (open_clip name, or
  the DINOv2 backbone's torch.hub name for AnomalyDINO);
- ``weights``: ``{"source": "random", "seed"}`` | ``{"source": "file", "path", "sha256"}`` |
  ``{"source": "open_clip", "tag"}``;
- ``mode``: the method's name (``--method``: "sdp" | "sdp+" | "reference" | "anomalydino"), ``heads_sha256``
  (sdp+ only, else null); which records a method needs is the method's rule (``clipad.methods``:
  ``Method.manifest_error``);
- ``rvs``: method, profile, dbscan ``{eps, min_samples}`` or null, ``used`` [normal, abnormal]
  (differs from method after a fallback), ``notes``; absent for a method without text vectors
  (AnomalyDINO), as ``prompts``: set, source, sha256, n_normal, n_abnormal;
- ``image_size``: the graph input's size in px (1..4096): S for an S x S input, or [H, W] for a
  non-square one (AnomalyDINO keeps its reference images' aspect ratio; the policy that fills it
  is the method's: ``Manifest.geometry``), ``mean``/``std`` (3 finite floats each, std
  > 0), ``sigma`` (0..64; 0 = no blur), ``max_batch`` (1..1024), ``precisions`` (the servable
  graphs, in the order they were added; exactly the ONNX graphs ``files`` lists);
- ``onnx``: the graph's ``inputs``/``outputs`` (name, dtype, shape with "batch" first) and opset;
  every ONNX graph file must have exactly these (``check_graph``, when the graph is opened);
- ``parity``: ``tolerances`` per precision, then the figures of each checked graph;
- ``calibration``: null until `clipad calibrate` (every number finite, ``score_range`` min < max);
  ``int8``: how ``model.int8.onnx`` was made;
- ``engine``: the TensorRT sidecar's content (``model.plan.json``), when there is a plan;
- ``reference``: the baked normal-reference memory (``ReferenceEntry``), absent without one;
- ``anomalydino``: AnomalyDINO's backbone, options and memory (``AnomalyDinoEntry``; the memory
  itself in ``dino_memory.safetensors``), for mode anomalydino only;
- ``openvino``: the OpenVINO IR (``model.xml``/``.bin``, ``model.int8.xml``/``.bin``), its
  precisions, parity figures and quality gates, when exported with ``--openvino``;
- ``timings_s``, ``warnings``, ``versions``; ``files``: sha256 of every artifact file.

Errors are one line naming the field: ``<dir>/manifest.json: max_batch: must be >= 1``.
This module imports neither torch nor open_clip: serving reads it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_serializer,
    model_validator,
)

from clipad.core.atomic import write_text_atomic
from clipad.core.choices import DinoBackbone, Masking, Method, Precision, RvsMethod, ServedPrecision
from clipad.core.errors import ClipadError
from clipad.core.values import MAX_BATCH, MAX_IMAGE_SIZE, MAX_SIGMA
from clipad.data.geometry import Geometry
from clipad.methods.base import Preprocess
from clipad.methods.registry import get_method

FORMAT_VERSION = 1
CALIBRATION_VERSION = 1

# Every file of an artifact directory, named once.
MANIFEST = "manifest.json"
TEXT_FEATURES = "text_features.npy"  # float32 [2, embed_dim]: row 0 normal, row 1 abnormal
ONNX_FP32 = "model.onnx"
ONNX_FP16 = "model.fp16.onnx"
ONNX_INT8 = "model.int8.onnx"  # written by `clipad calibrate --int8`
PLAN = "model.plan"
PLAN_META = "model.plan.json"
HEADS_FILE = "heads.safetensors"  # sdp+ only
REFERENCE_MEMORY = "reference_memory.safetensors"  # with a reference: float32 [stages, patches, width], unit rows
DINO_MEMORY = "dino_memory.safetensors"  # anomalydino: float32 [patches, width], unit rows (a constant of the graph)
# OpenVINO IR (`clipad export --openvino`): the FP32 IR converted from model.onnx, with its FP32
# islands marked (deploy/openvino_ir.py); fp32, bf16 and fp16 compile from it with an explicit
# precision hint. The INT8 IR is NNCF's quantisation of it.
OV_XML, OV_BIN = "model.xml", "model.bin"
OV_INT8_XML, OV_INT8_BIN = "model.int8.xml", "model.int8.bin"
ARTIFACT_FILES = (
    TEXT_FEATURES,
    ONNX_FP32,
    ONNX_FP16,
    ONNX_INT8,
    PLAN,
    PLAN_META,
    HEADS_FILE,
    REFERENCE_MEMORY,
    DINO_MEMORY,
    OV_XML,
    OV_BIN,
    OV_INT8_XML,
    OV_INT8_BIN,
)  # what ``files`` may list

ONNX_FILES: dict[str, str] = {"fp32": ONNX_FP32, "fp16": ONNX_FP16, "int8": ONNX_INT8}  # precision -> its graph
CATEGORY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a category names files and Triton models
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _sha256(value: str) -> str:
    if not _SHA256_RE.match(value):
        raise ValueError("must be a sha256 (64 lowercase hex digits)")
    return value


def _artifact_file(value: str) -> str:
    if value not in ARTIFACT_FILES:
        raise ValueError(f"not an artifact file name (one of {', '.join(ARTIFACT_FILES)})")
    return value


def _category(value: str) -> str:
    if not CATEGORY_RE.match(value):
        raise ValueError("must be letters, digits, '_', '.' or '-'")
    return value


def _dim(value: Any) -> int | str:
    # One check for both kinds of dimension, so an error names the dimension, not a union member.
    if isinstance(value, bool) or not (isinstance(value, int) and value > 0 or isinstance(value, str) and value):
        raise ValueError(f"must be a positive size or a dimension name (got {value!r})")
    return value


def _measured(value: float) -> float:
    # NaN is kept: a broken graph's figures are recorded with the graph dropped, not refused.
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _ordered(value: list[float]) -> list[float]:
    if not value[0] <= value[1]:
        raise ValueError("must be [min, max] with min <= max")
    return value


def _wide(value: list[float]) -> list[float]:
    if not value[0] < value[1]:
        raise ValueError("must be [min, max] with min < max")
    return value


Sha256 = Annotated[str, AfterValidator(_sha256)]
ArtifactFile = Annotated[str, AfterValidator(_artifact_file)]
NonEmpty = Annotated[str, Field(min_length=1)]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Measured = Annotated[float, AfterValidator(_measured)]
Dim = Annotated[int | str, PlainValidator(_dim)]
Range = Annotated[list[float], Field(min_length=2, max_length=2), AfterValidator(_ordered)]
# Calibration constants decide every label: NaN or infinity there would fail open (a NaN threshold
# compares false, so every frame would be "normal"), so they are refused when the manifest is read.
Finite = Annotated[float, Field(allow_inf_nan=False)]
FiniteRange = Annotated[list[Finite], Field(min_length=2, max_length=2), AfterValidator(_ordered)]
# A range the code divides by (the normalised score): `clipad calibrate` refuses a zero width.
FiniteSpan = Annotated[list[Finite], Field(min_length=2, max_length=2), AfterValidator(_wide)]


T = TypeVar("T")
# An optional key the layout leaves out, rather than writing null, when it has no value (the
# untyped manifest only wrote such keys when it had one).
Omitted = Annotated[T | None, Field(exclude_if=lambda v: v is None)]


class Record(BaseModel):
    """Base of every manifest record: immutable, unknown keys refused, JSON keys = field names."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    @classmethod
    def create(cls, **fields: Any) -> Self:
        """A validated record; a ClipadError naming the field when a value is not valid."""
        try:
            return cls.model_validate(fields)
        except ValidationError as err:
            raise ClipadError(f"{MANIFEST}: {describe_error(err)}") from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` (pydantic's model_copy would not validate them)."""
        return self.create(**{**self.model_dump(), **changes})


class RandomWeights(Record):
    source: Literal["random"]
    seed: int


class FileWeights(Record):
    source: Literal["file"]
    path: NonEmpty  # absolute path of the state dict at export time
    sha256: Sha256


class OpenClipWeights(Record):
    source: Literal["open_clip"]
    tag: NonEmpty  # open_clip pretrained tag


Weights = Annotated[RandomWeights | FileWeights | OpenClipWeights, Field(discriminator="source")]


class DbscanParams(Record):
    eps: Annotated[float, Field(gt=0)]
    min_samples: Positive


class Rvs(Record):
    """The representative-vector method; ``used``: [normal, abnormal] method really used."""

    method: RvsMethod
    profile: NonEmpty
    dbscan: DbscanParams | None
    used: Annotated[list[RvsMethod], Field(min_length=2, max_length=2)]
    notes: list[str]


class Prompts(Record):
    """The prompt set and the number of sentences per side (states x templates)."""

    set: NonEmpty
    source: NonEmpty
    sha256: Sha256
    n_normal: Positive
    n_abnormal: Positive


def _image_size(value: Any) -> int | list[int]:
    # S (an S x S input) or [H, W]; one check, so an error names the field, not a union member.
    def side(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_IMAGE_SIZE

    if side(value) or isinstance(value, list) and len(value) == 2 and all(map(side, value)):
        return value
    if isinstance(value, list):
        raise ValueError(f"must be S or [H, W] with sides > 0 and <= {MAX_IMAGE_SIZE} (got {value!r})")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer (got {value!r})")
    raise ValueError(f"must be > 0 (got {value!r})" if value <= 0 else f"must be <= {MAX_IMAGE_SIZE} (got {value!r})")


# A square input is always written as S (``graph_image_size``).
ImageSize = Annotated[int | list[int], PlainValidator(_image_size)]


class TensorSpec(Record):
    """One graph input or output: shape with symbolic dims as strings ("batch" first)."""

    name: NonEmpty
    dtype: Literal["uint8", "float32", "float16"]
    shape: list[Dim]


class OnnxSpec(Record):
    """The graph's one input (uint8 [batch, S, S, 3]) and its outputs, as the graph file has them."""

    inputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=1)]
    outputs: Annotated[list[TensorSpec], Field(min_length=1)]
    opset: Positive


def graph_image_size(inputs: list[TensorSpec]) -> int | list[int] | str:
    """The manifest's ``image_size`` of the graph input [batch, H, W, 3]: S when H = W = S, else
    [H, W] (the shape as written when it is not of that form)."""
    shape = inputs[0].shape
    if not (len(shape) == 4 and isinstance(shape[1], int) and isinstance(shape[2], int) and shape[3] == 3):
        return str(shape)
    return shape[1] if shape[1] == shape[2] else [shape[1], shape[2]]


class Tolerance(Record):
    """Limits of one precision: rel_l2 and prob_max_abs at most, top-1% agreement at least."""

    rel_l2: NonNegative
    prob_max_abs: NonNegative
    top1pct_agreement: NonNegative


class ParityFigures(Record):
    """One model's outputs against a reference's (``against``), the one record of a comparison
    (``clipad.deploy.parity.compare``): max abs and relative L2 error of anomaly_map, max abs error
    of image_prob, top-1% pixel agreement; then the provenance its user records: ``inputs``
    (words) or ``n_images``, ``violations`` of the precision's tolerance (None: not judged).

    Export figures add the batch-1 rel L2; a dropped FP16 graph has ``dropped`` true; ``nodes``
    counts the FP16 graph's nodes by precision; INT8 figures add ``calibration_images``. Keys
    without a value are left out of the JSON.
    """

    max_abs: Measured
    rel_l2: Measured
    prob_max_abs: Measured
    top1pct_agreement: Fraction
    batch1_rel_l2: Omitted[Measured] = None
    against: NonEmpty
    inputs: Omitted[str] = None
    violations: Omitted[list[str]] = None
    dropped: Omitted[bool] = None
    nodes: Omitted[dict[str, Count]] = None
    n_images: Omitted[Positive] = None
    calibration_images: Omitted[Positive] = None

    def values(self) -> dict[str, float]:
        """The four figures, in the manifest's and `clipad parity --json`'s order."""
        return {k: getattr(self, k) for k in ("max_abs", "rel_l2", "prob_max_abs", "top1pct_agreement")}

    @property
    def within(self) -> bool | None:
        """Inside the tolerance it was judged against; None where it was not judged."""
        return None if self.violations is None else not self.violations


class QualityGate(Record):
    """One reduced precision judged on labelled held-out images against FP32 (the same IR):
    pixel and image AUROC of both, their drop in points (x100), the limit, and the map
    agreement figures beside them; ``passed``: both drops within ``max_drop_points``."""

    n_images: Positive
    n_anomalous: Count
    pixel_auroc_fp32: Fraction
    pixel_auroc: Fraction
    image_auroc_fp32: Fraction
    image_auroc: Fraction
    pixel_drop_points: float
    image_drop_points: float
    max_drop_points: NonNegative
    agreement: ParityFigures
    passed: bool


class Parity(Record):
    """``tolerances`` per precision, ``graphs``: the figures of each graph that was checked, and
    ``gates``: the AUROC quality gate of each reduced ONNX graph (`clipad export --gate-data`),
    when judged. In the JSON each graph's figures sit beside ``tolerances`` under its precision
    ("fp32", "fp16", "int8"), as they always have."""

    tolerances: dict[Precision, Tolerance]
    graphs: dict[Precision, ParityFigures] = Field(default_factory=dict)
    gates: Omitted[dict[Precision, QualityGate]] = None

    @model_validator(mode="before")
    @classmethod
    def _graphs_from_layout(cls, data: Any) -> Any:
        if isinstance(data, dict) and "graphs" not in data:
            data = dict(data)
            data["graphs"] = {p: data.pop(p) for p in get_args(Precision) if p in data}
        return data

    @model_serializer(mode="wrap")
    def _layout(self, handler) -> dict[str, Any]:
        data = handler(self)
        graphs = data.pop("graphs")
        tail = {"gates": data.pop("gates")} if "gates" in data else {}
        return {**data, **{p: graphs[p] for p in get_args(Precision) if p in graphs}, **tail}

    def figures(self, precision: str) -> ParityFigures | None:
        return self.graphs.get(precision)  # type: ignore[call-overload]


class CalibrationSet(Record):
    """The calibration images: counts, and the sha256 over their content hashes (and masks)."""

    good: Count
    anomalous: Count
    skipped: Count
    sha256: Omitted[Sha256] = None


class CalibrationConstants(Record):
    """What `clipad calibrate` fixes, before provenance is added.

    image_prob_range / map_max_range: (min, max) over the calibration images; threshold: on the
    fused score; score_range: the fused score's (min, max), min < max; pixel_threshold: on
    anomaly_map values; every number finite; method / pixel_method: the threshold rules used;
    achieved: fpr, pixel_fpr, and f1, recall, pixel_f1 when labelled.
    """

    version: Literal[1]
    image_prob_range: FiniteRange
    map_max_range: FiniteRange
    threshold: Finite
    score_range: FiniteSpan
    pixel_threshold: Finite
    method: NonEmpty
    pixel_method: NonEmpty
    target_fpr: Annotated[float, Field(gt=0, lt=1)]
    achieved: dict[str, Finite]
    set: CalibrationSet


class CalibrationEntry(CalibrationConstants):
    """The manifest's ``calibration``: the constants plus the backend that produced the outputs,
    the sha256 of the files the constants depend on (null for an absent file) and the time."""

    backend: NonEmpty
    model_files: dict[str, Sha256 | None]
    created: str


class Int8Entry(Record):
    """How ``model.int8.onnx`` was made: the agreement gate, format, quantised op types,
    range method and the sha256 of the FP32 graph it was quantised from."""

    min_agreement: NonNegative
    format: NonEmpty
    ops: list[str]
    calibration: NonEmpty
    source_sha256: Sha256


class EngineProfile(Record):
    """Batch sizes of a plan's optimisation profile: ``min`` 1, ``opt`` the batch its kernels are
    tuned for (`clipad export --opt-batch`; plans built before that option have 1), ``max`` the
    manifest's max batch."""

    min: Positive
    opt: Positive
    max: Positive

    @model_validator(mode="after")
    def check_order(self) -> Self:
        if not self.min <= self.opt <= self.max:
            raise ValueError("must have min <= opt <= max")
        return self


class EngineMeta(Record):
    """A TensorRT plan's sidecar (``model.plan.json``, also the manifest's ``engine``): where it
    was built (TensorRT version, GPU, compute capability), its input and batch profile, the
    source graph and its sha256, precision, whether the network was strongly typed (every plan
    since the one-policy change; older TensorRT 10 FP16 plans were not), layer counts by kind
    (``tensorrt.inspector.layer_kind``), build time and whether TF32 was allowed."""

    tensorrt: NonEmpty
    gpu: NonEmpty
    compute_capability: NonEmpty
    category: NonEmpty
    input: TensorSpec
    profile: EngineProfile
    onnx: ArtifactFile
    onnx_sha256: Sha256
    precision: Precision
    strongly_typed: bool
    layers: dict[str, Count]
    fp16_layer_fraction: Fraction
    build_s: NonNegative
    # Whether FP32 layers may run in TF32: false since clipad clears BuilderFlag.TF32; absent
    # (None) in sidecars written before, whose plans kept TensorRT's default (TF32 on).
    tf32: Omitted[bool] = None

    @classmethod
    def read(cls, path: str | Path) -> EngineMeta:
        """Parse a sidecar file; one line naming the field when it is not valid."""
        return _parse(cls, _read_json(Path(path)), Path(path))

    def write(self, path: str | Path) -> None:
        write_text_atomic(path, json.dumps(self.model_dump(), indent=2) + "\n")


class ReferenceImage(Record):
    """One reference image: its path relative to the reference set's common folder, and sha256."""

    name: NonEmpty
    sha256: Sha256


class ReferenceScore(Record):
    """The in-graph normalisation of the map maximum, s(m) = sigmoid((m - center) / scale), and
    the leave-one-out maxima it was fixed from (method.md section 14)."""

    center: float
    scale: Annotated[float, Field(gt=0)]
    maxima: list[float]
    method: NonEmpty


class ReferenceEntry(Record):
    """The normal-reference memory baked into the graphs (method.md section 14): the images,
    K (``shots``), the bound N per stage (``memory_patches``), the patches kept and the patches
    they were chosen from per stage, the coverage radius per stage (cosine distance; after
    `clipad reference add` an upper bound), the memory's bytes, the reference images' original
    size [width, height], how stages combine, and the score constants."""

    images: Annotated[list[ReferenceImage], Field(min_length=1)]
    shots: Positive
    memory_patches: Positive
    patches_per_stage: Positive
    source_patches: Positive
    coreset_radius: list[NonNegative]
    memory_bytes: Positive
    source_size: Annotated[list[Positive], Field(min_length=2, max_length=2)]
    stages: Literal["sum"]
    score: ReferenceScore

    def sha256s(self) -> set[str]:
        return {i.sha256 for i in self.images}


class AnomalyDinoEntry(Record):
    """AnomalyDINO's export (method.md section 15): the ``backbone`` (torch.hub name), the
    ``resolution`` (px, a multiple of 14: the smaller edge images are resized to), ``rotations`` (each good image also
    rotated by 45, ..., 315 degrees), ``masking`` (the foreground mask on or off, as resolved)
    and ``masking_option`` (what was asked: auto, on, off); the good ``images`` and their number
    ``shots``; the memory: ``memory_patches`` (the coreset bound asked; absent: every patch, the
    official protocol), ``patches`` kept of ``source_patches``, each ``width`` wide, the coverage
    radius (cosine distance; 0: all kept), its bytes; the images' original [width, height]."""

    backbone: DinoBackbone
    resolution: Positive
    rotations: bool
    masking: bool
    masking_option: Masking
    images: Annotated[list[ReferenceImage], Field(min_length=1)]
    shots: Positive
    memory_patches: Omitted[Positive] = None
    patches: Positive
    source_patches: Positive
    width: Positive
    coreset_radius: NonNegative
    memory_bytes: Positive
    source_size: Annotated[list[Positive], Field(min_length=2, max_length=2)]

    @model_validator(mode="after")
    def check_counts(self) -> Self:
        if self.patches > self.source_patches:
            raise ValueError(f"patches: {self.patches} kept of {self.source_patches} source patches")
        if self.shots != len(self.images):
            raise ValueError(f"shots: {self.shots}, but {len(self.images)} images are listed")
        return self

    def sha256s(self) -> set[str]:
        return {i.sha256 for i in self.images}


OvPrecision = ServedPrecision  # an OpenVINO compile precision (fp32/bf16/fp16: hints on model.xml)


class OpenVinoEntry(Record):
    """The OpenVINO IR: ``version`` (OpenVINO), ``source_sha256`` (model.onnx it came from),
    ``ir``: precision -> its IR's .xml file (fp32/bf16/fp16 share model.xml), ``fp32_layers``:
    how many of its layers carry OpenVINO's "precise" marking (kept in FP32 under a bf16/fp16
    hint), ``parity``: figures per precision against the PyTorch reference (fp32 within the FP32
    tolerance; the others recorded), ``gates``: the quality gate per reduced precision
    (`clipad export --openvino --gate-data DIR`), ``cpu``: the CPU the figures were measured on."""

    version: NonEmpty
    source_sha256: Sha256
    ir: dict[OvPrecision, ArtifactFile]
    fp32_layers: Count
    parity: dict[OvPrecision, ParityFigures]
    gates: Omitted[dict[OvPrecision, QualityGate]] = None
    cpu: NonEmpty


class Manifest(Record):
    """The whole ``manifest.json`` (see the module docstring for the layout)."""

    format_version: Literal[1]
    created: str
    category: Annotated[str, AfterValidator(_category)]
    object_name: NonEmpty
    model: NonEmpty
    weights: Weights
    mode: Method  # the method's name (JSON key "mode", format version 1)
    heads_sha256: Sha256 | None
    rvs: Omitted[Rvs] = None  # absent: a method without text vectors (Method.manifest_error)
    prompts: Omitted[Prompts] = None
    image_size: ImageSize
    mean: Annotated[list[Finite], Field(min_length=3, max_length=3)]
    std: Annotated[list[Annotated[Finite, Field(gt=0)]], Field(min_length=3, max_length=3)]
    sigma: Annotated[Finite, Field(ge=0, le=MAX_SIGMA)]
    max_batch: Annotated[int, Field(ge=1, le=MAX_BATCH)]
    precisions: Annotated[list[Precision], Field(min_length=1)]
    onnx: OnnxSpec
    parity: Parity
    calibration: CalibrationEntry | None
    timings_s: dict[str, NonNegative]
    warnings: list[str]
    versions: dict[str, str]
    engine: Omitted[EngineMeta] = None
    files: dict[ArtifactFile, Sha256]
    int8: Omitted[Int8Entry] = None
    reference: Omitted[ReferenceEntry] = None
    anomalydino: Omitted[AnomalyDinoEntry] = None
    openvino: Omitted[OpenVinoEntry] = None

    @model_validator(mode="after")
    def check_consistency(self) -> Self:
        # Each check names the field that is wrong; all of them held for every export so far.
        if len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"precisions: listed twice in {self.precisions}")
        for p in self.precisions:
            if ONNX_FILES[p] not in self.files:
                raise ValueError(f"files: no {ONNX_FILES[p]} although precisions lists {p}")
            if self.parity.figures(p) is None:
                raise ValueError(f"parity.{p}: missing although precisions lists {p}")
        for graph, name in ONNX_FILES.items():
            if name in self.files and graph not in self.precisions:
                raise ValueError(f"precisions: no {graph} although files lists {name}")
        taken = graph_image_size(self.onnx.inputs)
        if taken != self.image_size:
            raise ValueError(f"image_size: {self.image_size}, but onnx.inputs describes a {taken} px input")
        if isinstance(self.image_size, list) and get_method(self.mode, "mode").preprocess is Preprocess.SQUASH:
            raise ValueError(f"image_size: mode {self.mode} takes a square input, not {self.image_size}")
        if (self.rvs is None) != (self.prompts is None):
            raise ValueError("prompts: present exactly when rvs is (the text vectors' records)")
        error = get_method(self.mode, "mode").manifest_error(
            heads=self.heads_sha256 is not None and HEADS_FILE in self.files,
            reference=self.reference is not None,
            text=self.rvs is not None,
            dino=self.anomalydino is not None,
        )
        if error is not None:
            raise ValueError(error)
        if (self.anomalydino is not None) != (DINO_MEMORY in self.files):
            raise ValueError(f"anomalydino: present exactly when files lists {DINO_MEMORY}")
        if self.anomalydino is not None and (
            self.model != self.anomalydino.backbone or self.anomalydino.resolution not in self.geometry.hw
        ):
            raise ValueError(
                f"model: {self.model} at {self.image_size} px, but anomalydino records {self.anomalydino.backbone} "
                f"at {self.anomalydino.resolution} px"
            )
        if (self.engine is not None) != (PLAN in self.files and PLAN_META in self.files):
            raise ValueError(f"engine: present exactly when files lists {PLAN} and {PLAN_META}")
        if (self.int8 is not None) != ("int8" in self.precisions):
            raise ValueError("int8: present exactly when precisions lists int8")
        if (self.reference is not None) != (REFERENCE_MEMORY in self.files):
            raise ValueError(f"reference: present exactly when files lists {REFERENCE_MEMORY}")
        if self.openvino is not None:
            for xml in set(self.openvino.ir.values()):
                for name in (xml, xml.removesuffix(".xml") + ".bin"):
                    if name not in self.files:
                        raise ValueError(f"openvino.ir: no {name} in files")
        return self

    @property
    def geometry(self) -> Geometry:
        """The graph input's size and the policy that fills it from an image of any size: the
        method's (``Method.preprocess``: squash for CLIP-AD; AnomalyDINO's smaller edge at its
        ``resolution``, then the top-left crop)."""
        h, w = (self.image_size, self.image_size) if isinstance(self.image_size, int) else self.image_size
        if get_method(self.mode, "mode").preprocess is Preprocess.SQUASH:
            return Geometry(h, w)
        assert self.anomalydino is not None  # check_consistency: the smaller-edge method's record
        return Geometry(h, w, self.anomalydino.resolution)

    # --- reading and writing -------------------------------------------------------------

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Parse and validate ``path``; one line (ClipadError) naming the field when it is not valid,
        or saying to re-export when it has another format version."""
        path = Path(path)
        data = _read_json(path)
        version = data.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise ClipadError(
                f"{path} has format version {version}; this clipad reads version {FORMAT_VERSION}: re-export"
            )
        return _parse(cls, data, path)

    def to_json(self) -> str:
        """The file's text: JSON, indent 2, trailing newline (NaN figures written as NaN, as json does)."""
        return json.dumps(self.model_dump(), indent=2) + "\n"

    def write(self, path: str | Path) -> None:
        """Write atomically: readers see the previous file or this one, never a partial one."""
        write_text_atomic(path, self.to_json())

    # --- updates: each returns a new, validated manifest ---------------------------------

    def with_files(self, hashes: Mapping[str, str]) -> Manifest:
        """``files`` with ``hashes`` (name -> sha256) added or replaced."""
        return self.replace(files={**self.files, **hashes})

    def with_calibration(self, entry: CalibrationEntry | None) -> Manifest:
        """The calibration constants replaced (None: uncalibrated)."""
        return self.replace(calibration=entry)

    def with_int8(self, graph_sha256: str, figures: ParityFigures, tolerance: Tolerance, entry: Int8Entry) -> Manifest:
        """``model.int8.onnx`` added: its hash, parity figures and tolerance, ``int8`` last in
        ``precisions``, and how it was made."""
        parity = self.parity.replace(tolerances={**self.parity.tolerances, "int8": tolerance}, int8=figures)
        return self.replace(
            files={**self.files, ONNX_INT8: graph_sha256},
            parity=parity,
            int8=entry,
            precisions=[p for p in self.precisions if p != "int8"] + ["int8"],
        )

    def with_openvino(self, entry: OpenVinoEntry, hashes: Mapping[str, str]) -> Manifest:
        """The OpenVINO record replaced, with the IR files' sha256 (``hashes``)."""
        return self.replace(openvino=entry, files={**self.files, **hashes})

    def with_engine(self, meta: EngineMeta, hashes: Mapping[str, str] | None = None) -> Manifest:
        """The TensorRT plan's sidecar as ``engine``; ``hashes``: the plan's and sidecar's sha256
        (required when the manifest does not list them yet)."""
        return self.replace(engine=meta, files={**self.files, **(hashes or {})})

    # --- reading helpers ------------------------------------------------------------------

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None


R = TypeVar("R", bound=Record)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ClipadError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ClipadError(f"cannot read {path}: not a JSON object")
    return data


def _parse(cls: type[R], data: dict, path: Path) -> R:
    # Strict: a string where a number belongs is an error, not a conversion.
    try:
        return cls.model_validate(data, strict=True)
    except ValidationError as err:
        raise ClipadError(f"{path}: {describe_error(err)}") from None


# pydantic's error types in our words ({...}: from the error's context); a value follows in
# "(got ...)" unless the type is in _NO_VALUE.
_WORDS = {
    "missing": "missing",
    "extra_forbidden": "unknown field",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "finite_number": "must be a finite number",
    "literal_error": "must be {expected}",
    "greater_than_equal": "must be >= {ge}",
    "greater_than": "must be > {gt}",
    "less_than_equal": "must be <= {le}",
    "less_than": "must be < {lt}",
    "too_short": "must have at least {min_length} items",
    "too_long": "must have at most {max_length} items",
    "string_too_short": "must not be empty",
    "union_tag_invalid": "must be one of {expected_tags}",
    "union_tag_not_found": "missing",
    "value_error": "{error}",
}
_NO_VALUE = {
    "missing",
    "extra_forbidden",
    "too_short",
    "too_long",
    "string_too_short",
    "union_tag_not_found",
    "value_error",
}


def describe_error(err: ValidationError) -> str:
    """``field.path: what is wrong`` for the first problem, and how many more there are."""
    errors = err.errors(include_url=False)
    first, n, ctx = errors[0], len(errors) - 1, errors[0].get("ctx", {})
    kind = first["type"]
    # The weights union puts the chosen tag into the location (weights.file.sha256); it names no field.
    loc = [p for i, p in enumerate(first["loc"]) if not (i == 1 and first["loc"][0] == "weights") and p != "[key]"]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if kind in ("union_tag_invalid", "union_tag_not_found"):  # name the tag's key: weights.source
        field += "." + str(ctx.get("discriminator", "")).strip("'")
    text = _WORDS[kind].format(**ctx) if kind in _WORDS else first["msg"][:1].lower() + first["msg"][1:]
    if kind in _WORDS and kind not in _NO_VALUE:
        got = repr(ctx["tag"] if kind == "union_tag_invalid" else first.get("input"))
        text += f" (got {got[:40] + '...' if len(got) > 43 else got})"
    more = f" (and {n} more problem{'s' if n > 1 else ''})" if n else ""
    return (f"{field}: {text}" if field else text) + more
