"""Opening and choosing backends: ONNX Runtime, the PyTorch reference and TensorRT, behind one
interface (``base.Backend``) used by every consumer: the runtime, `clipad predict`, calibration,
parity and bench. Backends check the manifest's sha256 of their model file before loading it.
"""

from __future__ import annotations

from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import PLAN
from clipad.runtime.backends.base import BACKENDS, Backend, BackendInfo, BackendName, Device

__all__ = ["BACKENDS", "Backend", "BackendInfo", "BackendName", "Device", "open_backend", "select_backend"]


def open_backend(artifacts: Artifacts, name: str, precision: str = "fp32", device: str = "auto") -> Backend:
    """The named backend for ``artifacts``; one line when it cannot run here."""
    if name == "onnxruntime":
        from clipad.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(artifacts, precision, device)
    if name == "torch":
        from clipad.runtime.backends.torch_backend import TorchBackend

        return TorchBackend(artifacts, precision, device)
    if name == "tensorrt":
        from clipad.runtime.backends.tensorrt_backend import TensorRTBackend

        if not artifacts.has(PLAN):
            raise ClipadError(f"{artifacts.root} has no {PLAN}; build one with `clipad export --engine`")
        return TensorRTBackend(artifacts, precision, device)
    raise ClipadError(f"unknown backend '{name}' (one of {', '.join(BACKENDS)})")


def select_backend(artifacts: Artifacts, name: str = "auto", device: str = "auto", precision: str = "auto") -> Backend:
    """``auto``: TensorRT when a usable plan is there, else ONNX Runtime, else the torch reference.

    ``precision`` ``auto``: ONNX Runtime takes the FP16 graph when a GPU execution provider is
    available and the graph exists, the FP32 one otherwise (never INT8 unasked). An explicit
    precision (fp32, fp16, int8) is passed to the backend, which says in one line if it cannot.
    """
    def ort_precision() -> str:
        if precision != "auto":
            return precision
        return "fp16" if _ort_gpu() and "fp16" in artifacts.manifest.precisions else "fp32"

    if name != "auto":
        if precision == "auto":
            return open_backend(artifacts, name, ort_precision() if name == "onnxruntime" else ("fp32" if name == "torch" else None), device)
        be = open_backend(artifacts, name, precision, device)
        if be.precision != precision:  # a TensorRT plan has the precision it was built with
            raise ClipadError(f"the {name} model here is {be.precision}, not {precision}")
        return be
    problems = []
    engine = artifacts.manifest.engine
    if artifacts.has(PLAN) and precision in ("auto", engine.precision if engine else None):
        try:
            return open_backend(artifacts, "tensorrt", None, device)
        except ClipadError as err:
            problems.append(f"tensorrt: {err}")
    try:
        return open_backend(artifacts, "onnxruntime", ort_precision(), device)
    except ClipadError as err:
        problems.append(f"onnxruntime: {err}")
    if precision in ("auto", "fp32"):
        try:
            return open_backend(artifacts, "torch", "fp32", device)
        except ClipadError as err:
            problems.append(f"torch: {err}")
    raise ClipadError("no backend can serve these artifacts: " + "; ".join(problems))


def _ort_gpu() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return any(p in ort.get_available_providers() for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
