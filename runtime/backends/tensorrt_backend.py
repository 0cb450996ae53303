"""TensorRT backend: the artifacts' ``model.plan`` in a ``TensorRTRunner`` (clipad.deploy.runners.tensorrt),
after the checks that need the artifact directory: GPU 0 only, cuda-python against TensorRT and
the driver (``cuda_mismatch``), the plan's sidecar against this TensorRT, this GPU, the graph's
shapes and the current graph (``check_plan``), the plan's sha256.

TensorRT cannot be installed on this project's build machines or on the GPU machine it is lent,
so this backend has not been run (README: what is verified); its refusals are tested without it
(tests/test_backends.py).
"""

from __future__ import annotations

import numpy as np

from clipad.core.choices import Precision
from clipad.core.errors import ClipadError
from clipad.core.packages import installed_version
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import PLAN
from clipad.deploy.runners.cuda import cuda_runtime, driver_cuda
from clipad.deploy.runners.tensorrt import TensorRTRunner
from clipad.deploy.tensorrt.install import cuda_mismatch, installed_tensorrt
from clipad.deploy.tensorrt.plan import check_plan, gpu_identity, require_tensorrt
from clipad.runtime.backends.base import Backend, BackendInfo


class TensorRTBackend(Backend):
    name = "tensorrt"
    runner: TensorRTRunner | None = None  # None until opened and once closed (close() after a failed __init__ works)

    def __init__(self, artifacts: Artifacts, precision: Precision | None = None, device: str = "cuda"):
        if device == "cpu":
            raise ClipadError("the tensorrt backend runs on an NVIDIA GPU only, not with --device cpu")
        if device not in ("auto", "cuda", "cuda:0"):
            raise ClipadError(
                f"the tensorrt backend runs on GPU 0 (the GPU its plan is checked against), not '{device}'"
            )
        trt = require_tensorrt()
        mismatch = cuda_mismatch(
            installed_tensorrt(), installed_version("cuda-bindings", "cuda-python"), driver_cuda(cuda_runtime())
        )
        if mismatch:
            raise ClipadError(mismatch)
        meta = artifacts.plan_meta()
        # Before the plan is deserialized, from its sidecar: built with this TensorRT on this GPU
        # (check_plan_compat), for these shapes and batch sizes (check_plan_shapes),
        # from the artifacts' current graph (check_plan_source). Then the engine itself is read.
        check_plan(meta, artifacts.manifest, trt.__version__, gpu_identity())
        plan = artifacts.verified_path(PLAN).read_bytes()
        self.runner = TensorRTRunner(trt, plan, artifacts.manifest.onnx, meta)
        self.max_batch = self.runner.max_batch
        self.precision = meta.precision

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.runner is None:
            raise ClipadError("the tensorrt backend was closed")
        return self.runner.infer(images)

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, self.precision, "cuda", "TensorRT plan", self.max_batch)

    def close(self) -> None:
        """Release the runner's stream, buffers, context and engine; again: nothing."""
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()
