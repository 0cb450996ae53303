"""TensorRT backend: a ``model.plan`` served with device buffers through cuda-python, one
stream and pinned host memory, sized once from the engine's optimisation profile.

Written against TensorRT's name-based tensor API (10.x and 11.x), as bound in NVIDIA/TensorRT
python/src/infer/pyCore.cpp (11.1 sources):
- ``ICudaEngine``: ``num_io_tensors`` (getNbIOTensors), ``get_tensor_name(index)``,
  ``get_tensor_mode(name)`` -> ``TensorIOMode`` (NONE/INPUT/OUTPUT), ``get_tensor_dtype(name)`` ->
  ``DataType``, ``get_tensor_shape(name)`` -> ``Dims`` with -1 for each dynamic dimension,
  ``get_tensor_profile_shape(name, profile)`` -> [min, opt, max] ``Dims`` (pyCore.cpp lines
  187-194, 1434-1439, 1508); ``Dims`` has ``__len__`` = nbDims (-1 for "no such tensor") and
  ``__getitem__`` (pyFoundationalTypes.cpp lines 96-104, 248-249);
- ``IExecutionContext``: ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3`` return
  bool (pyCore.cpp lines 113-121, 159-162, 1309-1333; NvInferRuntime.h: false when the name is
  not an input / the shape is outside the profile / enqueue failed);
- ``Runtime.deserialize_cuda_engine`` returns None when the plan cannot be loaded.
CUDA through ``cuda.bindings.runtime`` (cuda-python of the CUDA major TensorRT was built for, 12.6.1 at
least; the driver must support that major: ``cuda_mismatch``), whose calls return
``(cudaError_t, *values)``.

TensorRT cannot be installed on this project's build machines or on the GPU machine it is lent,
so the TensorRT half of this module has not been run (README: what is verified); the pure
checks (engine I/O against the manifest, profile against the sidecar, cuda-python versions,
the stream handle) are tested without it (tests/test_backends.py).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipad.core.errors import ClipadError
from clipad.core.packages import installed_version
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import PLAN, PLAN_META, EngineMeta, OnnxSpec
from clipad.deploy.tensorrt.install import cuda_mismatch, installed_tensorrt
from clipad.deploy.tensorrt.plan import check_plan, gpu_identity, require_tensorrt
from clipad.runtime.backends.base import Backend, BackendInfo

CUDA_PYTHON_MIN = (12, 6, 1)  # cuda.bindings.* exists from cuda-python 12.6.1 (its release notes: new module layout)
REBUILD = "rebuild it with `clipad export --engine`"

# --- cuda-python ------------------------------------------------------------------------------


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


def _check(result):
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


# --- the engine's I/O against the manifest -------------------------------------------------------

# TensorRT DataType member names (pyFoundationalTypes.cpp, enum DataType) -> numpy dtype names.
TRT_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
    "FP8": "fp8",
    "INT4": "int4",
    "FP4": "fp4",
    "E8M0": "e8m0",
}


@dataclass(frozen=True)
class EngineTensor:
    """One I/O tensor as the engine describes it: mode "input" or "output" ("none" for a name
    that is neither), numpy dtype name, shape with -1 for a dynamic dimension."""

    name: str
    mode: str
    dtype: str
    shape: tuple[int, ...]


def _enum_name(value: Any) -> str:
    return str(getattr(value, "name", value)).rsplit(".", 1)[-1]


def dims(value: Any) -> tuple[int, ...] | None:
    """A TensorRT ``Dims`` (or a tuple) as a tuple; None for ``Dims{-1, {}}``, TensorRT's answer
    for a name that maps to no tensor (``len()`` would raise on its nbDims of -1)."""
    n = int(value.__len__())
    if n < 0:
        return None
    return tuple(int(value[i]) for i in range(n))


def read_engine_io(engine: Any) -> list[EngineTensor]:
    """The engine's I/O tensors, read from the engine (None: the plan did not load, one line)."""
    if engine is None:
        raise ClipadError(
            f"TensorRT could not load {PLAN} (deserialize_cuda_engine returned None; see the "
            f"TensorRT log above): {REBUILD}"
        )
    out = []
    for i in range(int(engine.num_io_tensors)):
        name = engine.get_tensor_name(i)
        kind = _enum_name(engine.get_tensor_dtype(name))
        out.append(
            EngineTensor(
                name,
                _enum_name(engine.get_tensor_mode(name)).lower(),
                TRT_DTYPES.get(kind, kind.lower()),
                dims(engine.get_tensor_shape(name)) or (),
            )
        )
    return out


def _shape_text(shape: Sequence[int | str]) -> str:
    return "[" + ", ".join("dynamic" if d == -1 else str(d) for d in shape) + "]"


def check_engine_io(tensors: Sequence[EngineTensor], spec: OnnxSpec) -> None:
    """The engine's inputs and outputs against the exported graph's (the manifest's ``onnx``):
    the same names, dtypes and shapes, a dynamic engine dimension where the graph has a named
    one ("batch"). One line naming the first difference."""

    def fail(what: str) -> None:
        raise ClipadError(f"{PLAN} does not match the exported graph: {what}; {REBUILD}")

    for mode, expected in (("input", spec.inputs), ("output", spec.outputs)):
        got = {t.name: t for t in tensors if t.mode == mode}
        want = {t.name: t for t in expected}
        for name in want:
            if name not in got:
                fail(f"the engine has no {mode} '{name}' (its {mode}s: {', '.join(got) or 'none'})")
        for name in got:
            if name not in want:
                fail(f"the engine has an {mode} '{name}' the graph does not have (the graph's: {', '.join(want)})")
        for name, w in want.items():
            g = got[name]
            if g.dtype != w.dtype:
                fail(f"{mode} '{name}' is {g.dtype} in the engine, {w.dtype} in the manifest")
            same = len(g.shape) == len(w.shape) and all(
                (gd == -1) if isinstance(wd, str) else (gd == wd) for gd, wd in zip(g.shape, w.shape, strict=False)
            )
            if not same:
                fail(
                    f"{mode} '{name}' has shape {_shape_text(g.shape)} in the engine, "
                    f"{_shape_text(w.shape)} in the manifest"
                )


def check_engine_profile(name: str, profile: Sequence[tuple[int, ...] | None], meta: EngineMeta) -> int:
    """The engine's optimisation profile 0 for input ``name`` ([min, opt, max] shapes from
    ``get_tensor_profile_shape``) against the plan's sidecar; returns the max batch. One line
    when the engine has no profile or its batch range is not the recorded one."""
    if len(profile) != 3 or any(s is None or not s or min(s) < 1 for s in profile):
        raise ClipadError(f"{PLAN} has no optimisation profile for its input '{name}': {REBUILD}")
    got = tuple(s[0] for s in profile if s is not None)  # none is None after the check above
    want = (meta.profile.min, meta.profile.opt, meta.profile.max)
    if got != want:
        raise ClipadError(
            f"{PLAN}'s profile for '{name}' has batch min/opt/max {'/'.join(map(str, got))}, its sidecar "
            f"{PLAN_META} records {'/'.join(map(str, want))}: the two files are from different builds; {REBUILD}"
        )
    return got[2]


# --- buffers and the backend ----------------------------------------------------------------------


class _Buffer:
    """A device buffer and a pinned host buffer of the same size, the host one viewed as numpy."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype):
        cudart = cuda_runtime()
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        # None once freed (also before allocation, for free() after a failed allocation).
        self.device: int | None = None
        self.host_ptr: int | None = None
        self.host: np.ndarray | None = None
        self.device = _check(cudart.cudaMalloc(self.nbytes))
        try:
            self.host_ptr = _check(cudart.cudaMallocHost(self.nbytes))
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


class TensorRTBackend(Backend):
    name = "tensorrt"
    # Everything close() releases, None/empty until acquired: close() works on a backend whose
    # __init__ failed half-way, and twice.
    runtime = None
    engine = None
    context = None
    stream = None

    def __init__(self, artifacts: Artifacts, precision: str | None = None, device: str = "cuda"):
        self.buffers = {}
        if device == "cpu":
            raise ClipadError("the tensorrt backend runs on an NVIDIA GPU only, not with --device cpu")
        if device not in ("auto", "cuda", "cuda:0"):
            raise ClipadError(
                f"the tensorrt backend runs on GPU 0 (the GPU its plan is checked against), not '{device}'"
            )
        trt = require_tensorrt()
        cudart = cuda_runtime()
        mismatch = cuda_mismatch(
            installed_tensorrt(), installed_version("cuda-bindings", "cuda-python"), driver_cuda(cudart)
        )
        if mismatch:
            raise ClipadError(mismatch)
        meta = artifacts.plan_meta()
        # Before the plan is deserialized, from its sidecar: built with this TensorRT on this GPU
        # (check_plan_compat), for these shapes and batch sizes (check_plan_shapes),
        # from the artifacts' current graph (check_plan_source). Then the engine itself is read.
        check_plan(meta, artifacts.manifest, trt.__version__, gpu_identity())
        plan = artifacts.verified_path(PLAN).read_bytes()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine(plan)
        spec = artifacts.manifest.onnx
        tensors = read_engine_io(engine)
        check_engine_io(tensors, spec)
        if len(spec.inputs) != 1:
            raise ClipadError(f"the tensorrt backend serves graphs with one input, this one has {len(spec.inputs)}")
        self.engine = engine
        self.input_name = spec.inputs[0].name
        self.output_names = [t.name for t in spec.outputs]  # manifest order: anomaly_map, image_prob
        if int(engine.num_optimization_profiles) < 1:
            raise ClipadError(f"{PLAN} has no optimisation profile: {REBUILD}")
        profile = [dims(d) for d in engine.get_tensor_profile_shape(self.input_name, 0)]
        self.max_batch = check_engine_profile(self.input_name, profile, meta)
        self.precision = meta.precision
        dtypes = {t.name: t.dtype for t in tensors}
        try:
            self.context = engine.create_execution_context()
            if self.context is None:
                raise ClipadError(
                    f"TensorRT could not create an execution context for {PLAN} (out of GPU memory? "
                    "see the TensorRT log above)"
                )
            self.stream = _check(cudart.cudaStreamCreate())
            # Buffers for the profile's max: the input at its max shape, each output at the shape
            # TensorRT infers for it at that input shape.
            max_shape = profile[2]
            assert max_shape is not None  # check_engine_profile rejected a profile with a missing shape
            self._set_input_shape(max_shape)
            shapes: dict[str, tuple[int, ...]] = {self.input_name: max_shape}
            for name in self.output_names:
                shape = dims(self.context.get_tensor_shape(name))
                if shape is None or any(d < 0 for d in shape):
                    raise ClipadError(
                        f"TensorRT gives output '{name}' no fixed shape at input {list(max_shape)}: {REBUILD}"
                    )
                shapes[name] = shape
            for name, shape in shapes.items():
                self.buffers[name] = _Buffer(shape, np.dtype(dtypes[name]))
            for name, buf in self.buffers.items():
                assert buf.device is not None  # allocated just above
                if not self.context.set_tensor_address(name, int(buf.device)):
                    raise ClipadError(
                        f"TensorRT refused the device buffer for '{name}' (set_tensor_address returned False)"
                    )
        except BaseException:
            self.close()
            raise

    def _set_input_shape(self, shape: tuple[int, ...]) -> None:
        assert self.context is not None  # called by __init__ once it has one, and by _infer after its check
        if not self.context.set_input_shape(self.input_name, tuple(int(d) for d in shape)):
            raise ClipadError(
                f"TensorRT refused input shape {list(shape)} for '{self.input_name}' (outside the plan's "
                f"profile, batch 1..{self.max_batch}?)"
            )

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.context is None:
            raise ClipadError("the tensorrt backend was closed")
        cudart = cuda_runtime()
        b = len(images)
        inp = self.buffers[self.input_name]
        if tuple(images.shape[1:]) != inp.shape[1:]:
            raise ClipadError(f"the TensorRT plan takes images {list(inp.shape[1:])}, got {list(images.shape[1:])}")
        inp.array[:b] = images
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(inp.device, inp.host_ptr, images.nbytes, h2d, self.stream))
        self._set_input_shape((b, *inp.shape[1:]))
        if not self.context.execute_async_v3(stream_handle(self.stream)):
            raise ClipadError("TensorRT inference failed (execute_async_v3 returned False; see the TensorRT log above)")
        for name in self.output_names:
            out = self.buffers[name]
            _check(cudart.cudaMemcpyAsync(out.host_ptr, out.device, b * (out.nbytes // out.shape[0]), d2h, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        amap, prob = (self.buffers[n].array[:b].copy() for n in self.output_names)
        return amap, prob

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, self.precision, "cuda", "TensorRT plan", self.max_batch)

    def close(self) -> None:
        """Wait for the stream, free every buffer once, destroy the stream, then drop the context
        before the engine. Every handle is taken off the object before it is released, so a
        second call (or one after a failed __init__) finds nothing to release."""
        buffers, stream = getattr(self, "buffers", None) or {}, self.stream
        self.buffers, self.stream = {}, None
        if stream is not None or buffers:
            cudart = cuda_runtime()
            if stream is not None:
                cudart.cudaStreamSynchronize(stream)
            for buf in buffers.values():
                buf.free()
            if stream is not None:
                cudart.cudaStreamDestroy(stream)
        self.context = None
        self.engine = None
        self.runtime = None
