"""TensorRT runner: a serialized plan run with device buffers through cuda-python, one stream and
pinned host memory, sized once from the engine's optimisation profile; the engine's I/O and
profile are checked against the exported graph (the manifest's ``onnx``) and the plan's sidecar.

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
CUDA through ``cuda.bindings.runtime`` (``runners.cuda``).

TensorRT cannot be installed on this project's build machines or on the GPU machine it is lent,
so this module has not been run (README: what is verified); the pure
checks (engine I/O against the manifest, profile against the sidecar) are tested without it (tests/test_backends.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clipad.core.errors import ClipadError
from clipad.deploy.manifest import PLAN, PLAN_META, EngineMeta, OnnxSpec
from clipad.deploy.runners.base import Outputs, Runner
from clipad.deploy.runners.cuda import DeviceBuffer, check_cuda, cuda_runtime, stream_handle

REBUILD = "rebuild it with `clipad export --engine`"

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


class TensorRTRunner(Runner):
    """A plan (its bytes) deserialized with the ``tensorrt`` module ``trt``, checked against
    ``spec`` (the exported graph's I/O) and ``meta`` (its sidecar: the batch profile); buffers for
    the profile's max batch. ``max_batch``: the profile's max."""

    # Everything close() releases, None/empty until acquired: close() works on a runner whose
    # __init__ failed half-way, and twice.
    runtime: Any = None
    engine: Any = None
    context: Any = None
    stream: Any = None

    def __init__(self, trt: Any, plan: bytes, spec: OnnxSpec, meta: EngineMeta):
        self.buffers: dict[str, DeviceBuffer] = {}
        cudart = cuda_runtime()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        engine = self.runtime.deserialize_cuda_engine(plan)
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
        dtypes = {t.name: t.dtype for t in tensors}
        try:
            self.context = engine.create_execution_context()
            if self.context is None:
                raise ClipadError(
                    f"TensorRT could not create an execution context for {PLAN} (out of GPU memory? "
                    "see the TensorRT log above)"
                )
            self.stream = check_cuda(cudart.cudaStreamCreate())
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
                self.buffers[name] = DeviceBuffer(shape, np.dtype(dtypes[name]))
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
        assert self.context is not None  # called by __init__ once it has one, and by infer after its check
        if not self.context.set_input_shape(self.input_name, tuple(int(d) for d in shape)):
            raise ClipadError(
                f"TensorRT refused input shape {list(shape)} for '{self.input_name}' (outside the plan's "
                f"profile, batch 1..{self.max_batch}?)"
            )

    def infer(self, images: np.ndarray) -> Outputs:
        if self.context is None:
            raise ClipadError("the tensorrt backend was closed")
        cudart = cuda_runtime()
        b = len(images)
        inp = self.buffers[self.input_name]
        if tuple(images.shape[1:]) != inp.shape[1:]:
            raise ClipadError(f"the TensorRT plan takes images {list(inp.shape[1:])}, got {list(images.shape[1:])}")
        inp.array[:b] = images
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check_cuda(cudart.cudaMemcpyAsync(inp.device, inp.host_ptr, images.nbytes, h2d, self.stream))
        self._set_input_shape((b, *inp.shape[1:]))
        if not self.context.execute_async_v3(stream_handle(self.stream)):
            raise ClipadError("TensorRT inference failed (execute_async_v3 returned False; see the TensorRT log above)")
        for name in self.output_names:
            out = self.buffers[name]
            check_cuda(
                cudart.cudaMemcpyAsync(out.host_ptr, out.device, b * (out.nbytes // out.shape[0]), d2h, self.stream)
            )
        check_cuda(cudart.cudaStreamSynchronize(self.stream))
        amap, prob = (self.buffers[n].array[:b].copy() for n in self.output_names)
        return amap, prob

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
