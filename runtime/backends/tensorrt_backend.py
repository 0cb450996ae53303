"""TensorRT backend: a ``model.plan`` served with device buffers through cuda-python, one
stream and pinned host memory, sized once for the plan's max batch.

Written against TensorRT's name-based tensor API (10.x and 11.x: ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) and ``cuda.bindings.runtime``. TensorRT cannot be
installed on this project's build machines or on the GPU machine it is lent, so this module
has not been run there (README: what is verified).
"""

from __future__ import annotations

import ctypes

import numpy as np

from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import PLAN
from clipad.deploy.tensorrt_build import check_plan_compat, gpu_identity, require_tensorrt
from clipad.runtime.backends.base import Backend, BackendInfo


def _check(result):
    """cuda-python calls return (error, *values); raise on error, return the values."""
    from cuda.bindings import runtime as cudart

    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise ClipadError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


class _Buffer:
    """A device buffer and a pinned host buffer of the same size, viewed as a numpy array."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype):
        from cuda.bindings import runtime as cudart

        self.shape, self.dtype = shape, np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.device = _check(cudart.cudaMalloc(self.nbytes))
        self.host_ptr = _check(cudart.cudaMallocHost(self.nbytes))
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self.host_ptr))
        self.host = np.frombuffer(raw, dtype=self.dtype).reshape(shape)

    def free(self) -> None:
        from cuda.bindings import runtime as cudart

        cudart.cudaFree(self.device)
        cudart.cudaFreeHost(self.host_ptr)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, artifacts: Artifacts, precision: str | None = None, device: str = "cuda"):
        trt = require_tensorrt()
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise ClipadError("the tensorrt backend needs cuda-python (pip install 'clipad[gpu]')") from None
        meta = artifacts.plan_meta()
        check_plan_compat(meta, trt.__version__, gpu_identity())
        plan = artifacts.verified_path(PLAN).read_bytes()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ClipadError(f"TensorRT could not load {PLAN} (see the TensorRT log above); rebuild it with `clipad export --engine`")
        self.context = self.engine.create_execution_context()
        self.precision = meta.precision
        self.max_batch = meta.profile.max
        size = artifacts.image_size
        self.stream = _check(cudart.cudaStreamCreate())
        self.buffers = {
            "image": _Buffer((self.max_batch, size, size, 3), np.uint8),
            "anomaly_map": _Buffer((self.max_batch, size, size), np.float32),
            "image_prob": _Buffer((self.max_batch,), np.float32),
        }
        for name, buf in self.buffers.items():
            self.context.set_tensor_address(name, int(buf.device))

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from cuda.bindings import runtime as cudart

        b = len(images)
        inp, amap, prob = self.buffers["image"], self.buffers["anomaly_map"], self.buffers["image_prob"]
        inp.host[:b] = images
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(inp.device, inp.host_ptr, images.nbytes, h2d, self.stream))
        self.context.set_input_shape("image", tuple(images.shape))
        if not self.context.execute_async_v3(int(self.stream)):
            raise ClipadError("TensorRT inference failed (see the TensorRT log above)")
        _check(cudart.cudaMemcpyAsync(amap.host_ptr, amap.device, b * amap.nbytes // self.max_batch, d2h, self.stream))
        _check(cudart.cudaMemcpyAsync(prob.host_ptr, prob.device, b * prob.nbytes // self.max_batch, d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return amap.host[:b].copy(), prob.host[:b].copy()

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, self.precision, "cuda", "TensorRT plan", self.max_batch)

    def close(self) -> None:
        from cuda.bindings import runtime as cudart

        for buf in self.buffers.values():
            buf.free()
        cudart.cudaStreamDestroy(self.stream)
