"""ONNX Runtime backend: TensorRT EP, then CUDA EP, then CPU EP, whichever really loads."""

from __future__ import annotations

import numpy as np

from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import ONNX_FILES, ONNX_INT8
from clipad.runtime.backends.base import Backend, BackendInfo

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, artifacts: Artifacts, precision: str | None = "fp32", device: str = "auto"):
        import onnxruntime as ort

        if precision is None:
            precision = "fp32"
        if precision not in ONNX_FILES:
            raise ClipadError(f"onnxruntime runs fp32, fp16 or int8 graphs, not '{precision}'")
        if precision == "int8" and not artifacts.has(ONNX_INT8):
            raise ClipadError(f"{artifacts.root} has no {ONNX_INT8}; make one with `clipad calibrate --int8 --images DIR`")
        path = artifacts.verified_path(ONNX_FILES[precision])
        available = ort.get_available_providers()
        wanted = ["CPUExecutionProvider"] if device == "cpu" else [p for p in PREFERRED if p in available]
        self.session = ort.InferenceSession(str(path), providers=wanted)
        # get_available_providers() lists GPU providers that then fail to load; trust the session.
        self.providers = self.session.get_providers()
        self.precision = precision
        self.max_batch = artifacts.max_batch

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        amap, prob = self.session.run(None, {"image": images})
        return amap, prob

    def info(self) -> BackendInfo:
        device = "cpu" if self.providers[0] == "CPUExecutionProvider" else "cuda"
        return BackendInfo(self.name, self.precision, device, self.providers[0], self.max_batch)

    def close(self) -> None:
        self.session = None
