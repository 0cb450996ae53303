"""cuda-python for the TensorRT runner: ``cuda.bindings.runtime`` (cuda-python of the CUDA major
TensorRT was built for, 12.6.1 at least), whose calls return ``(cudaError_t, *values)``, the
stream handle, and a device buffer with its pinned host twin. Not run on this project's machines
(no TensorRT, README); the pure parts are tested (tests/test_backends.py)."""

from __future__ import annotations

import ctypes
import importlib.util
import re
from typing import Any

import numpy as np

from clipad.core.errors import ClipadError
from clipad.core.packages import installed_version
from clipad.deploy.tensorrt.install import installed_tensorrt

CUDA_PYTHON_MIN = (12, 6, 1)  # cuda.bindings.* exists from cuda-python 12.6.1 (its release notes: new module layout)


def _version_tuple(version: str) -> tuple[int, ...]:
    """Leading numeric release parts: '12.6.2.post1' -> (12, 6, 2), '13.0.0rc1' -> (13, 0, 0)."""
    parts = []
    for piece in version.split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    return tuple(parts)


def cuda_python_requirement(cuda_major: int | None) -> str:
    """The cuda-python requirement for TensorRT built for CUDA ``cuda_major`` (None: the CUDA 13
    of `clipad[gpu]`): the same major, and for CUDA 12 at least 12.6.1 (cuda.bindings)."""
    major = cuda_major or 13
    low = ".".join(map(str, CUDA_PYTHON_MIN)) if major == CUDA_PYTHON_MIN[0] else str(major)
    return f"cuda-python>={low},<{major + 1}"


def cuda_python_problem(
    import_error: str, installed: str | None, legacy_layout: bool, cuda_major: int | None = None
) -> str:
    """Why ``cuda.bindings.runtime`` cannot be used, in one line.

    ``installed``: the cuda-python (or cuda-bindings) distribution's version, None when neither
    is installed; ``legacy_layout``: the pre-12.6.1 modules (``cuda.cudart``) are importable;
    ``cuda_major``: the CUDA major of the installed TensorRT (the requirement named follows it).
    Before 12.6.1 cuda-python had ``cuda.cuda``/``cuda.cudart`` and no ``cuda.bindings``, so an
    installed but older cuda-python is "too old", not "missing".
    """
    need = cuda_python_requirement(cuda_major)
    old = _version_tuple(installed) < CUDA_PYTHON_MIN if installed is not None else legacy_layout
    if old:
        which = (
            f"cuda-python {installed}"
            if installed
            else "the installed cuda-python (it has cuda.cudart, not cuda.bindings)"
        )
        return (
            f"{which} is too old for the tensorrt backend: it needs cuda.bindings.runtime, which cuda-python "
            f"has from 12.6.1; pip install -U '{need}'"
        )
    if installed is not None:
        return (
            f"cuda-python {installed} is installed but cuda.bindings.runtime does not import ({import_error}); "
            f"reinstall it: pip install --force-reinstall '{need}'"
        )
    return f"the tensorrt backend needs cuda-python, which is not installed: pip install '{need}' (or 'clipad[gpu]')"


def _legacy_cuda_layout() -> bool:
    try:
        return importlib.util.find_spec("cuda.cudart") is not None
    except (ImportError, ValueError):
        return False


def cuda_runtime():
    """``cuda.bindings.runtime``, or a one-line ClipadError saying what to install."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as err:
        trt = installed_tensorrt()
        raise ClipadError(
            cuda_python_problem(
                str(err),
                installed_version("cuda-python", "cuda-bindings"),
                _legacy_cuda_layout(),
                trt.cuda_major if trt else None,
            )
        ) from None
    return cudart


def driver_cuda(cudart: Any) -> str | None:
    """The newest CUDA version the installed driver supports ("12.8"), None without a driver.
    ``cudaDriverGetVersion`` returns 1000 * major + 10 * minor, 0 when no driver is installed
    (CUDA Runtime API reference; seen here without a driver: (cudaSuccess, 0))."""
    try:
        err, version = cudart.cudaDriverGetVersion()
    except Exception:  # noqa: BLE001 - a binding that cannot ask: unknown
        return None
    if err != cudart.cudaError_t.cudaSuccess or not version:
        return None
    return f"{version // 1000}.{version % 1000 // 10}"


def check_cuda(result):
    """cuda-python calls return (error, *values); raise on error, return the value(s)."""
    cudart = cuda_runtime()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        name = getattr(err, "name", str(err))
        raise ClipadError(f"CUDA error {name}: {text.decode() if isinstance(text, bytes) else text}")
    return values[0] if len(values) == 1 else values


def stream_handle(stream: Any) -> int:
    """The stream's native ``cudaStream_t`` value as an int, for ``execute_async_v3``.

    cuda-bindings 12.9.1 and 13.0.0 deprecate ``int(obj)`` for this and add
    ``cuda.bindings.utils.get_cuda_native_handle`` (release notes 12.9.1/13.0.0;
    cuda_bindings/cuda/bindings/utils/__init__.py, the ``runtime.cudaStream_t`` getter in
    utils/_get_handle.pyx.in reads the handle value). cuda-bindings 12.6.1-12.9.0 have no
    ``cuda.bindings.utils``; there ``int(obj)`` is the accessor that the deprecation replaces.
    (``getPtr()`` is not one: it is the address where the wrapper stores the handle.)
    """
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(stream)
    return int(get_cuda_native_handle(stream))


class DeviceBuffer:
    """A device buffer and a pinned host buffer of the same size, the host one viewed as numpy."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype):
        cudart = cuda_runtime()
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        # None once freed (also before allocation, for free() after a failed allocation).
        self.device: int | None = None
        self.host_ptr: int | None = None
        self.host: np.ndarray | None = None
        self.device = check_cuda(cudart.cudaMalloc(self.nbytes))
        try:
            self.host_ptr = check_cuda(cudart.cudaMallocHost(self.nbytes))
        except ClipadError:
            self.free()
            raise
        raw = (ctypes.c_ubyte * self.nbytes).from_address(int(self.host_ptr))
        self.host = np.frombuffer(memoryview(raw), dtype=self.dtype).reshape(self.shape)

    @property
    def array(self) -> np.ndarray:
        """``host``, of a buffer not yet freed (a backend takes its buffers off itself before freeing them)."""
        assert self.host is not None, "the buffer was freed"
        return self.host

    def free(self) -> None:
        """Release both allocations; a second call does nothing (the pointers are dropped first)."""
        device, host_ptr = self.device, self.host_ptr
        self.device = self.host_ptr = self.host = None
        if device is None and host_ptr is None:
            return
        cudart = cuda_runtime()
        if device is not None:
            cudart.cudaFree(device)
        if host_ptr is not None:
            cudart.cudaFreeHost(host_ptr)
