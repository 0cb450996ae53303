"""The closed sets of choices that cross module boundaries, as ``Literal`` types, and the one
function that parses a user's word into one of them (``parse_choice``).

Defined here, below everything and without torch, so that the reference (``clipad.model``), the
manifest (``clipad.deploy.manifest``), calibration, the runtime and the CLI name them once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal, TypeVar, get_args, overload

from clipad.core.errors import ClipadError

# The --method words: SDP (zero-shot), SDP+ (with the four trained heads), reference (good images
# only, method.md 14), anomalydino (few-shot DINOv2 nearest neighbours, method.md 15). Each is one
# module of clipad.methods, registered in clipad.methods.registry.
Method = Literal["sdp", "sdp+", "reference", "anomalydino"]
DinoBackbone = Literal["dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14"]  # AnomalyDINO's --backbone (torch.hub names)
Masking = Literal["auto", "on", "off"]  # AnomalyDINO's foreground mask; auto: the official per-category table

Precision = Literal["fp32", "fp16", "int8"]  # of a graph, an engine or a served backend
PRECISIONS: tuple[str, ...] = get_args(Precision)
ServedPrecision = Literal["fp32", "fp16", "int8", "bf16"]  # what a backend may serve (bf16: OpenVINO only)

# triton: a remote server; openvino: its precision is a per-machine choice. `auto` picks neither.
BackendName = Literal["torch", "onnxruntime", "tensorrt", "triton", "openvino"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
# The one table of which precisions each backend serves (whether a given artifact directory has
# the file is the backend's check): torch in fp32 or fp16 autocast; ONNX Runtime, TensorRT and
# Triton the exported graphs and plans; OpenVINO its IR under each compile precision.
SERVES: dict[BackendName, tuple[ServedPrecision, ...]] = {
    "torch": ("fp32", "fp16"),
    "onnxruntime": ("fp32", "fp16", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
    "triton": ("fp32", "fp16", "int8"),
    "openvino": ("fp32", "bf16", "fp16", "int8"),
}
DeviceChoice = Literal["auto", "cpu", "cuda"]  # --device (ONNX Runtime and torch also take cuda:N)
Device = Literal["cpu", "cuda"]  # where a backend's work really runs

Attention = Literal[
    "fused", "explicit"
]  # the torch path's attention: scaled_dot_product_attention, or MatMul + Softmax

RvsMethod = Literal["mean", "pca", "kde", "dbscan", "mean_shift"]  # method.md section 3.3


Int8Backend = Literal["onnxruntime", "openvino"]  # which INT8 model `calibrate --int8` makes
OpenVinoMode = Literal["latency", "throughput"]  # OpenVINO's performance hint
Dataset = Literal["mvtec", "visa", "folder"]  # the dataset readers (clipad.data)
CacheDtype = Literal["float16", "float32"]  # the training feature cache


RvsProfile = Literal[
    "mvtec", "visa"
]  # whose DBSCAN parameters the RVS uses: MVTec AD's (eps 0.5, 15) or VisA's (1.5, 25)


E = TypeVar("E", bound=StrEnum)


@overload
def parse_choice(kind: type[E], value: str, option: str) -> E: ...
@overload
def parse_choice(kind: Any, value: str, option: str) -> str: ...
def parse_choice(kind: Any, value: str, option: str) -> Any:
    """``value`` as a member of ``kind`` (a StrEnum, a ``Literal`` alias or a tuple of words), or a
    one-line ClipadError naming ``option`` and the allowed words. The one place a choice's
    allowed values are spelled in an error: `clipad --help` shows them through ``metavar``."""
    words = _words(kind)
    if value not in words:
        raise ClipadError(f"{option} must be one of {', '.join(words)}, got '{value}'")
    return kind(value) if isinstance(kind, type) and issubclass(kind, StrEnum) else value


def _words(kind: Any) -> tuple[str, ...]:
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        return tuple(kind)
    return tuple(kind) if isinstance(kind, tuple) else get_args(kind)


def check_served(backend: BackendName, precision: str) -> ServedPrecision:
    """``precision`` as one that ``backend`` serves (``SERVES``), or one line naming both."""
    return parse_choice(SERVES[backend], precision, f"--precision of the {backend} backend")  # type: ignore[return-value]


def metavar(kind: Any) -> str:
    """A choice as `--help` shows it: ``[sdp|sdp+|reference]``."""
    return "[" + "|".join(_words(kind)) + "]"
