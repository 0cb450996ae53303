"""`clipad export` as a record: what the user asked for (``ExportRequest``, its fields named as the
command's options), the checks of their combinations, and what came out (``ExportResult``).

``ExportRequest.prepare`` checks and loads the model (the slow part before the export itself);
``PreparedExport.run`` exports. ``--precision int8 --engine`` only builds the TensorRT engine from
the calibrated INT8 graph in ``out`` (``int8_engine``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, cast

from clipad.core.errors import ClipadError
from clipad.core.values import MEMORY_PATCHES
from clipad.core.weights import RANDOM_WEIGHTS_NOTE
from clipad.deploy.artifacts import Artifacts, made_by_calibrate
from clipad.deploy.manifest import ONNX_INT8, PLAN

if TYPE_CHECKING:
    from clipad.core.progress import Tasks
    from clipad.deploy.export import ExportConfig
    from clipad.methods.base import Method
    from clipad.model.dinov2 import DinoWeights
    from clipad.model.loading import LoadedModel, WeightSpec


@dataclass
class ExportRequest:
    category: str
    out: Path | None = None  # None: artifacts/<category>
    object_name: str | None = None
    method: str = "sdp"  # clipad.methods: a registered name (--method, alias --mode)
    heads: Path | None = None
    rvs: str = "dbscan"
    rvs_profile: str = "mvtec"
    prompts: str = "industrial"
    sigma: float | None = None  # None: the method's (8; AnomalyDINO's fixed 4)
    max_batch: int = 8
    precision: str = "all"  # fp32, fp16, all; int8: the engine from the calibrated INT8 graph
    engine: bool = False
    opt_batch: int | None = None
    triton_repo: Path | None = None
    reference: str | None = None  # good images baked into the graph
    shots: int | None = None
    memory_patches: int | None = None  # None: 1024 in the reference mode, every patch for AnomalyDINO
    backbone: str | None = None  # AnomalyDINO's options (None: not given; DinoOptions' defaults)
    resolution: int | None = None
    rotations: bool = False
    masking: str | None = None
    openvino: bool = False
    gate_data: Path | None = None
    max_auroc_drop: float = 0.5
    device: str = "cpu"
    # What --precision int8 --engine uses (parameter names); any other option given would be ignored.
    INT8_ENGINE_OPTIONS: ClassVar[set[str]] = {"category", "out", "precision", "engine", "opt_batch", "quiet"}

    @property
    def target(self) -> Path:
        return self.out or Path("artifacts") / self.category

    def chosen(self) -> Method:
        """The registered method of ``method`` (one line when it is not one)."""
        from clipad.methods.registry import get_method

        return get_method(self.method)

    def refuse_unused(self, given: list[str]) -> None:
        """One line for a combination where an option would do nothing; ``given``: the options on the command
        line other than ``INT8_ENGINE_OPTIONS``."""
        if self.opt_batch is not None and not self.engine:
            raise ClipadError("--opt-batch sets the TensorRT engine's optimisation profile: add --engine")
        if self.precision != "int8":
            return
        if given:
            raise ClipadError(
                f"--precision int8 --engine builds the engine from the calibrated {ONNX_INT8} in --out and exports "
                f"nothing else; {', '.join(given)} would be ignored: leave {'it' if len(given) == 1 else 'them'} out"
            )
        if not self.engine:
            raise ClipadError(
                f"--precision int8 builds a TensorRT engine from {ONNX_INT8}: add --engine "
                f"(ONNX Runtime runs {ONNX_INT8} as it is: --backend onnxruntime)"
            )

    def int8_engine(self) -> str:
        """Build the INT8 engine in ``target``; the line that says what was built."""
        from clipad.deploy.tensorrt.build import int8_engine

        meta = int8_engine(self.target, opt_batch=self.opt_batch)
        return (
            f"INT8 engine written to {self.target / PLAN} (TensorRT {meta.tensorrt}, {meta.gpu}, {meta.build_s} s, "
            f"batch {meta.profile.min}..{meta.profile.max} tuned for {meta.profile.opt})"
        )

    def config(self, weights: WeightSpec | None = None) -> ExportConfig:
        """The library's export config, after the checks that need no model (one line each);
        ``weights``: the weight options (the CLIP ones are refused for AnomalyDINO)."""
        from clipad.core.choices import RvsMethod, parse_choice
        from clipad.deploy.export import ExportConfig, ExportPrecision, validate
        from clipad.deploy.reference_set import ReferenceConfig, select_images
        from clipad.methods.anomalydino import dino_options
        from clipad.model.loading import WeightSpec, resolve_device
        from clipad.model.sdp import DEFAULT_SIGMA

        method = self.chosen()
        method.check_exported(self.engine, self.openvino, self.triton_repo is not None)
        clip_only = {
            "--heads": self.heads is not None,
            "--rvs": self.rvs != "dbscan",
            "--rvs-profile": self.rvs_profile != "mvtec",
            "--prompts": self.prompts != "industrial",
            "--object-name": self.object_name is not None,
            "--sigma (anomalydino blurs with the official sigma 4)": self.sigma is not None,
        }
        dino = dino_options(
            method, weights or WeightSpec(), self.backbone, self.resolution, self.rotations, self.masking, clip_only
        )
        method.check_options(self.heads is not None, self.reference is not None, "--reference GOOD_IMAGES")
        parse_choice(RvsMethod, self.rvs, "--rvs")
        if self.reference is None and self.shots is not None:
            raise ClipadError("--shots needs --reference GOOD_IMAGES")
        if self.memory_patches is not None:
            MEMORY_PATCHES.parse(self.memory_patches, "--memory-patches")
            if self.reference is None:
                raise ClipadError("--memory-patches bounds the reference memory: it goes with --reference GOOD_IMAGES")
        ref = None
        if self.reference is not None:
            ref = ReferenceConfig(self.reference, self.shots)
            if self.memory_patches is not None:
                ref = replace(ref, memory_patches=self.memory_patches)
        if ref is not None:  # the images are listed again when baked; a wrong path fails here, before the model
            ref.check()
            select_images(ref.source, ref.shots)
        cfg = ExportConfig(
            category=self.category,
            out=self.target,
            object_name=self.object_name,
            method=method.name,
            heads_path=self.heads,
            rvs=cast(RvsMethod, self.rvs),  # checked by parse_choice above
            rvs_profile=self.rvs_profile,
            prompts_source=self.prompts,
            sigma=DEFAULT_SIGMA if self.sigma is None else self.sigma,
            max_batch=self.max_batch,
            precision=cast(ExportPrecision, self.precision),  # checked by validate below
            engine=self.engine,
            opt_batch=self.opt_batch,
            triton_repo=self.triton_repo,
            openvino=self.openvino,
            gate_root=self.gate_data,
            max_auroc_drop=self.max_auroc_drop,
            reference=ref,
            dino=dino,
            device=str(resolve_device(self.device)),
        )
        validate(cfg)
        return cfg

    def prepare(self, weights: WeightSpec, log: Callable[[str], None]) -> PreparedExport:
        """Check everything that needs no model, then load the model."""
        from clipad.model.loading import resolve_device
        from clipad.model.prompts import load_prompt_set

        cfg = self.config(weights)
        previous = made_by_calibrate(cfg.out)
        cfg.prompts = load_prompt_set(self.prompts)
        spec = weights if cfg.dino is None else replace(weights, model=cfg.dino.backbone)
        loaded = self.chosen().load(spec, resolve_device(self.device))
        if weights.random_weights:
            log(RANDOM_WEIGHTS_NOTE)
        return PreparedExport(cfg, loaded, previous)


@dataclass
class PreparedExport:
    cfg: ExportConfig
    loaded: LoadedModel | DinoWeights  # Method.load's
    previous: list[str]  # what `clipad calibrate` had added to the artifacts the export replaces

    def run(self, tasks: Tasks) -> ExportResult:
        from clipad.deploy.export import export

        return ExportResult(export(self.loaded, self.cfg, tasks), self.previous, self.cfg.triton_repo)


@dataclass
class ExportResult:
    artifacts: Artifacts
    previous: list[str] = field(default_factory=list)
    triton_repo: Path | None = None

    def describe(self) -> str:
        """Parity figures and quality gates of every graph, and where everything went."""
        lines = [*self.artifacts.describe_parity(), f"artifacts written to {self.artifacts.root}"]
        if self.triton_repo is not None:
            lines.append(f"Triton model repository written to {self.triton_repo}")
        return "\n".join(lines)

    def notes(self) -> list[str]:
        """The lines for stderr: the manifest's warnings, and what an export over calibrated artifacts undid."""
        lines = self.artifacts.warnings()
        if self.previous:
            lines.append(
                f"note: the earlier artifacts here had {' and '.join(self.previous)}; a new export starts "
                f"uncalibrated: run `clipad calibrate --artifacts {self.artifacts.root}` again"
            )
        return lines
