"""ONNX Runtime backend: one graph of the artifacts (hash-checked) in an ``OnnxRuntimeRunner``,
whose execution providers (TensorRT EP, then CUDA EP, then CPU EP, whichever really loads) are
chosen in ``clipad.deploy.runners.onnxruntime``, the same choice export parity and INT8 use."""

from __future__ import annotations

import numpy as np

from clipad.core.choices import Device, Precision, check_served
from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import ONNX_FILES, ONNX_INT8
from clipad.deploy.runners.onnxruntime import OnnxRuntimeRunner
from clipad.runtime.backends.base import Backend, BackendInfo


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, artifacts: Artifacts, precision: Precision = "fp32", device: str = "auto"):
        self.runner: OnnxRuntimeRunner | None = None
        check_served("onnxruntime", precision)
        if precision == "int8" and not artifacts.has(ONNX_INT8):
            raise ClipadError(
                f"{artifacts.root} has no {ONNX_INT8}; make one with `clipad calibrate --int8 --images DIR`"
            )
        path = artifacts.verified_path(ONNX_FILES[precision])
        self.runner = OnnxRuntimeRunner(path, precision, device, artifacts, artifacts.max_batch)
        self.providers = self.runner.providers
        self.precision = precision
        self.max_batch = artifacts.max_batch
        self.notes = self.runner.notes

    @property
    def on_gpu(self) -> bool:
        """Whether the session's first (preferred) provider is a GPU one."""
        return self.runner is not None and self.runner.on_gpu

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.runner is None:
            raise ClipadError("the onnxruntime backend was closed")
        return self.runner.infer(images)

    def info(self) -> BackendInfo:
        device: Device = "cuda" if self.on_gpu else "cpu"
        return BackendInfo(self.name, self.precision, device, self.providers[0], self.max_batch)

    def close(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()
