"""One backend interface for every consumer (parity, runtime, calibration, bench): a batch of
uint8 RGB frames at model resolution in, ``anomaly_map`` float32 [B, H, W] and ``image_prob``
float32 [B] out. Backends check the manifest's sha256 of their model file before loading it,
release what they hold in ``close()`` (also as context managers), and describe themselves with
a ``BackendInfo``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import Artifacts

BackendName = Literal["torch", "onnxruntime", "tensorrt"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class BackendInfo:
    """What a backend is and where it runs. device: where its work really runs (ONNX Runtime:
    its first loaded provider); detail: the provider or torch device, for people."""

    name: str
    precision: str
    device: Device
    detail: str
    max_batch: int

    def describe(self) -> str:
        return f"{self.name} {self.precision}" + (f" ({self.detail})" if self.detail else "")


class Backend(ABC):
    name: str = ""
    precision: str = "fp32"
    max_batch: int = 1

    @abstractmethod
    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images: uint8 [b, H, W, 3] with b <= max_batch."""

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB [B, H, W, 3] -> (float32 [B, H, W], float32 [B]); batches above max_batch are split."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ClipadError(f"backend input must be uint8 [B, H, W, 3], got {images.dtype} {list(images.shape)}")
        maps, probs = [], []
        for i in range(0, len(images), self.max_batch):
            m, p = self._infer(np.ascontiguousarray(images[i : i + self.max_batch]))
            maps.append(np.asarray(m, dtype=np.float32))
            probs.append(np.asarray(p, dtype=np.float32))
        return np.concatenate(maps), np.concatenate(probs)

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, self.precision, "cpu", "", self.max_batch)

    def describe(self) -> str:
        return self.info().describe()

    def close(self) -> None:
        """Release sessions, engines and device memory; calling it again does nothing."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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

        if not artifacts.has("model.plan"):
            raise ClipadError(f"{artifacts.root} has no model.plan; build one with `clipad export --engine`")
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
        return "fp16" if _ort_gpu() and "fp16" in artifacts.manifest["precisions"] else "fp32"

    if name != "auto":
        if precision == "auto":
            return open_backend(artifacts, name, ort_precision() if name == "onnxruntime" else ("fp32" if name == "torch" else None), device)
        be = open_backend(artifacts, name, precision, device)
        if be.precision != precision:  # a TensorRT plan has the precision it was built with
            raise ClipadError(f"the {name} model here is {be.precision}, not {precision}")
        return be
    problems = []
    if artifacts.has("model.plan") and precision in ("auto", artifacts.manifest.get("engine", {}).get("precision")):
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
