"""TensorRT engines: build from the exported ONNX, describe them in a sidecar, refuse mismatches.

Written against the TensorRT 10 and 11 Python API (neither can be installed on the machines this
project is built on; every call is checked against NVIDIA/TensorRT's pybind sources, see the
notes at each call). One precision policy on both majors: the network is always STRONGLY TYPED,
and the graph chosen decides the engine's precision (``plan_source``):

- FP16: ``model.fp16.onnx``, whose Cast nodes fix every layer's precision (the FP32 islands of
  ``fp16.py`` stay FP32); ``BuilderFlag.FP16`` is never set: it is deprecated since TensorRT 10.12
  (include/NvInfer.h, release/10.12 @2114dc715fe9, ``kFP16 TRT_DEPRECATED_ENUM``) and removed
  in 11, and on a weakly typed network it lets TensorRT run any layer in FP16;
- FP32 (an export without an FP16 graph): ``model.onnx``;
- INT8: ``model.int8.onnx`` (QDQ from `clipad calibrate --int8`), explicit quantisation.

``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists since 10.0 (python/src/infer/pyCore.cpp,
release/10.0 line 1456); in 11 it is deprecated and ignored because strong typing is always on
(include/NvInfer.h, main @a892d22267d9 line 11469), so on 11 no creation flag is passed.

After the build the engine inspector's JSON gives every layer's tensor types
(``count_layer_precisions``); an FP16 build without an FP16 layer, or an INT8 build without an
INT8 layer, is an error. The plan stays a plain plan (trtexec and Triton load it); its metadata
lives in ``model.plan.json`` (``EngineMeta``).

``unsupported_ops`` checks an ONNX graph against the TensorRT ONNX parser's operator matrix and
its per-input rules, which can run where TensorRT cannot.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.deploy.artifacts import Artifacts, hash_files, load_artifacts
from clipad.deploy.manifest import ONNX_FP16, ONNX_FP32, ONNX_INT8, PLAN, PLAN_META, EngineMeta, Manifest

MIN_TRT_MAJOR = 10  # STRONGLY_TYPED networks (the only kind clipad builds) exist from TensorRT 10.0
WORKSPACE_GIB = 4
OPT_BATCH_CAP = 8  # the default opt batch: a typical serving batch, capped by --max-batch

# --------------------------------------------------------------------------------------------
# The ONNX parser's operator matrix and per-input rules
# --------------------------------------------------------------------------------------------

# Data types per operator, from onnx-tensorrt docs/operators.md (the TensorRT 10.0 matrix, branch
# 10.1-GA @96e781103cfc, the newest copy that could be read here; later releases' matrices were
# not available), for every operator the clipad graphs use or could plausibly gain. The list applies to an operator's
# DATA inputs: index/shape/axes inputs (``_INDEX_INPUTS``), Where's condition and the scale and
# zero point of QuantizeLinear/DequantizeLinear follow their own rules below.
_F = {"float32", "float16", "bfloat16"}
_I = {"int32", "int64"}
_Q = {"int8", "float8e4m3fn", "int4"}  # TensorRT's quantized types (DequantizeLinear row: INT8, FP8, INT4)
TRT_OPS: dict[str, set[str]] = {
    **{op: _F | _I for op in ("Add", "Sub", "Mul", "Div", "Equal", "Max", "Min", "Neg", "Mod", "Greater", "Less",
                              "ReduceSum", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "Range", "Relu", "Abs",
                              "Sign", "Pad", "TopK")},
    **{op: _F | _I | {"bool"} for op in ("Concat", "Expand", "Gather", "Identity", "Reshape", "Shape", "Slice", "Squeeze",
                                       "Unsqueeze", "Transpose", "Where", "Tile", "Split", "Flatten", "ConstantOfShape")},
    **{op: _F for op in ("Conv", "Einsum", "Erf", "Exp", "Log", "Sqrt", "Sigmoid", "Tanh", "Softmax", "MatMul", "Gemm",
                         "LayerNormalization", "Clip", "Resize", "Reciprocal", "Floor", "Ceil", "Round", "Pow", "CumSum")},
    **{op: {"bool"} for op in ("And", "Or", "Not")},
    "Cast": _F | _I | {"uint8", "bool"},
    "Constant": _F | _I | {"bool"},
    "Gelu": _F | _I | {"int8"},
    "QuantizeLinear": _F,  # data input x; scale and zero point: _qdq_problems
    "DequantizeLinear": _Q,  # data input x
}
# Inputs that carry indices, shapes, axes, pads or counts (int32/int64) rather than data.
_INDEX_INPUTS: dict[str, set[int]] = {
    "Gather": {1}, "Reshape": {1}, "Expand": {1}, "Tile": {1}, "Slice": {1, 2, 3, 4}, "Squeeze": {1}, "Unsqueeze": {1},
    "Split": {1}, "ConstantOfShape": {0}, "Pad": {1, 3}, "TopK": {1}, "CumSum": {1}, "Resize": {3},
    **{op: {1} for op in ("ReduceSum", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin")},
}
_BOOL_INPUTS: dict[str, set[int]] = {"Where": {0}}

_ELEM = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}
_ELEM.update({onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"})


def _dtype(elem_type: int) -> str:
    return _ELEM.get(elem_type, str(elem_type))


def unsupported_ops(path: str | Path) -> list[str]:
    """Problems the TensorRT ONNX parser would have with this graph (empty list: none), one line each.

    Per node: the operator must be in the matrix; its data inputs must have one of the matrix's
    types; index inputs must be int32/int64; UINT8 only as a network input going straight into a
    Cast (docs/operators.md: "UINT8 is only supported as network input or output tensor types");
    QuantizeLinear/DequantizeLinear follow the parser's own checks (``_qdq_problems``).
    """
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    consts = _constants(g)
    for name, tensor in consts.items():
        types.setdefault(name, tensor.data_type)
    graph_inputs = {v.name for v in g.input}
    io_names = graph_inputs | {v.name for v in g.output}
    problems = []
    for n in g.node:
        where = f"{n.op_type} ({n.name})"
        allowed = TRT_OPS.get(n.op_type)
        if allowed is None:
            problems.append(f"{where}: not in TensorRT's supported-operator table")
            continue
        for i, name in enumerate(n.input):
            if not name or name not in types:
                continue
            dtype = _dtype(types[name])
            if dtype == "uint8":
                if not (n.op_type == "Cast" and name in graph_inputs):
                    problems.append(f"{where}: uint8 input '{name}'; TensorRT takes uint8 only as a network input straight into a Cast")
            elif n.op_type in ("QuantizeLinear", "DequantizeLinear") and i > 0:
                continue  # scale and zero point: _qdq_problems
            elif i in _INDEX_INPUTS.get(n.op_type, ()):
                if dtype not in _I:
                    problems.append(f"{where}: index input '{name}' is {dtype}, TensorRT wants int32 or int64")
            elif i in _BOOL_INPUTS.get(n.op_type, ()):
                if dtype != "bool":
                    problems.append(f"{where}: condition '{name}' is {dtype}, not bool")
            elif dtype not in allowed:
                problems.append(f"{where}: {dtype} input '{name}' is not supported by TensorRT")
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            problems += [f"{where}: {p}" for p in _qdq_problems(n, types, consts)]
        for name in n.output:
            if types.get(name) == onnx.TensorProto.UINT8 and name not in io_names:
                problems.append(f"{where}: uint8 output '{name}' inside the network")
    return problems


def _constants(g: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Build-time constants: initializers, Constant nodes' values and Identity of either (the
    parser looks through Identity for a zero point: getWeightsFromIdentityOrConstant)."""
    consts = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                consts[n.output[0]] = value
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    return consts


def _qdq_problems(n: onnx.NodeProto, types: Mapping[str, int], consts: Mapping[str, onnx.TensorProto]) -> list[str]:
    """The parser's checks of a QuantizeLinear/DequantizeLinear node, by input.

    onnx-tensorrt onnxOpImporters.cpp QuantDequantLinearHelper (10.1-GA @96e781103cfc, lines
    1346-1657) and IQuantizeLayer/IDequantizeLayer in include/NvInfer.h (release/10.16
    @d0faf303ba76, lines 5510-5570 and 5680-5715):
    - x (input 0): not UINT8 (line 1349); Q takes FP32/FP16/BF16, DQ INT8/FP8/INT4 (matrix);
    - x_scale (input 1): floating point, all coefficients > 0 when constant (line 1404); a scalar
      (per-tensor) or a 1-D tensor whose size is x's size along ``axis`` (per-channel, line 1536;
      without ``axis`` the parser takes axis 0 there);
    - per-channel only for constant x (weights): "Activations cannot be quantized per-channel"
      (NvInfer.h 5558, 5709);
    - zero point (input 2, optional): not UINT8 for Q (line 1354); its type is the quantized type
      (INT8 here); a build-time constant of zeros only (line 1491: symmetric quantisation; NvInfer.h:
      "zeroPt must only contain zero-valued coefficients"), with the scale's number of elements.
    """
    problems = []
    inputs = list(n.input) + [""] * (3 - len(n.input))
    x, scale, zero = inputs[:3]
    if not scale:
        return ["no scale input (TensorRT needs x_scale)"]
    scale_type = _dtype(types[scale]) if scale in types else None
    if scale_type is not None and scale_type not in _F:
        problems.append(f"scale '{scale}' is {scale_type}, TensorRT wants a floating-point scale")
    scale_size = None
    if scale in consts:
        s = numpy_helper.to_array(consts[scale])
        scale_size = int(s.size)
        if s.size == 0 or not np.all(s.astype(np.float64) > 0):
            problems.append(f"scale '{scale}' has coefficients <= 0 (TensorRT needs them all positive)")
        if s.ndim > 1:
            problems.append(f"scale '{scale}' has rank {s.ndim}; INT8 scales are scalars or 1-D (per channel)")
    if scale_size is not None and scale_size > 1:
        if x not in consts:
            problems.append(f"per-channel scale on '{x}', which is not a weight: TensorRT quantizes activations per tensor only")
        else:
            dims = list(consts[x].dims)
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            axis = axis + len(dims) if axis < 0 else axis
            if not 0 <= axis < len(dims) or dims[axis] != scale_size:
                problems.append(f"{scale_size} scales for axis {axis} of '{x}' with shape {dims}")
    if zero:
        zero_type = _dtype(types[zero]) if zero in types else None
        if zero_type == "uint8":
            problems.append(f"uint8 zero point '{zero}': TensorRT quantizes to signed INT8 only")
        elif zero_type is not None and zero_type not in _Q:
            problems.append(f"zero point '{zero}' is {zero_type}; TensorRT wants the quantized type (int8)")
        if zero not in consts:
            problems.append(f"zero point '{zero}' is not a build-time constant")
        else:
            z = numpy_helper.to_array(consts[zero])
            if np.any(z.astype(np.float64) != 0):
                problems.append(f"zero point '{zero}' is not zero: TensorRT supports symmetric quantization only")
            if scale_size is not None and z.size != scale_size:
                problems.append(f"zero point '{zero}' has {z.size} elements, the scale {scale_size}")
    return problems


# --------------------------------------------------------------------------------------------
# Engine inspector JSON: layer precisions (TensorRT 10 and 11 shapes)
# --------------------------------------------------------------------------------------------

# TensorRT 10 writes one "Format/Datatype" string per layer input/output: a format name with the
# type in it ("Row major linear FP32", "Channel major FP16 format where channel % 8 == 0",
# "Row major Int8 format") or, for Myelin/kgen layers, the type alone ("Half", "Float", "Int8")
# -- vocabulary from tools/experimental/trt-engine-explorer/trex/activations.py (release/10.16
# @d0faf303ba76, lines 29-98, read at line 136) and Polygraphy's reader
# (tools/Polygraphy/polygraphy/backend/trt/util.py line 864, main @a892d22267d9).
# TensorRT 11 splits it (migration guide "Migrating IEngineInspector Usage from TensorRT 10.x to
# 11.x": "the split of the Format/DataType field"). TensorRT 11.1's own inspector schema
# (.agents/skills/trt-perf-analysis/schemas/analyze-data.schema.json, release/11.1 @905361629f22,
# lines 463 and 472) names the tensor keys "Datatype" and "Format"; the guide's I/O Tensors
# example spells the type key "DataType" (value "Float"). Keys are therefore matched without
# regard to case: "Datatype"/"DataType", then "Format/Datatype", then "Format" (TensorRT 10's
# format names carry the type too).
_TYPE_TOKENS = {
    "FP32": "fp32", "FLOAT": "fp32", "FLOAT32": "fp32", "KFLOAT": "fp32",
    "FP16": "fp16", "HALF": "fp16", "FLOAT16": "fp16", "KHALF": "fp16",
    "BF16": "bf16", "BFLOAT16": "bf16", "KBF16": "bf16",
    "INT8": "int8", "KINT8": "int8",
    "FP8": "fp8", "KFP8": "fp8", "FP4": "fp4", "INT4": "int4", "UINT8": "uint8", "KUINT8": "uint8",
    "INT32": "int32", "KINT32": "int32", "INT64": "int64", "KINT64": "int64", "BOOL": "bool", "BOOLEAN": "bool",
}
_TYPE_KEYS = ("datatype", "format/datatype", "format")
LAYER_KINDS = ("int8", "fp16", "bf16", "fp32")  # a layer's kind, in this order of precedence; else "other"


def tensor_type(text: str) -> str | None:
    """The data type named in an inspector type or format string, or None ("N/A", unknown)."""
    for token in re.findall(r"[A-Za-z]+[0-9]*", str(text)):
        kind = _TYPE_TOKENS.get(token.upper())
        if kind is not None:
            return kind
    return None


def _tensor_kind(tensor: Any) -> tuple[str | None, bool]:
    """(data type, whether the tensor had a type-bearing key at all)."""
    if not isinstance(tensor, dict):
        return None, False
    fields = {str(k).lower(): v for k, v in tensor.items()}
    found = False
    for key in _TYPE_KEYS:
        if isinstance(fields.get(key), str):
            found = True
            kind = tensor_type(fields[key])
            if kind is not None:
                return kind, True
    return None, found


def layer_kind(layer: Any) -> str:
    """"int8" when any input or output is INT8 (a quantize layer, or a GEMM/conv that fused the
    dequantize of its INT8 inputs), else the first of fp16, bf16, fp32 among its outputs, else
    "other" (shape and index layers, or a layer the inspector gave no types for)."""
    ins, outs = _layer_types(layer)[0]
    if "int8" in ins or "int8" in outs:
        return "int8"
    return next((k for k in LAYER_KINDS[1:] if k in outs), "other")


def _layer_types(layer: Any) -> tuple[tuple[set, set], bool]:
    if not isinstance(layer, dict):
        return (set(), set()), False
    typed = False
    sides = []
    for key in ("Inputs", "Outputs"):
        kinds = set()
        for t in layer.get(key) or []:
            kind, has_key = _tensor_kind(t)
            typed = typed or has_key
            if kind is not None:
                kinds.add(kind)
        sides.append(kinds)
    return (sides[0], sides[1]), typed


def count_layer_precisions(info: Any) -> dict[str, int]:
    """Layers by kind (``layer_kind``) in the engine inspector's JSON (``get_engine_information``
    with ``LayerInformationFormat.JSON``): a ``{"Layers": [...]}`` object (TensorRT 10 and 11) or
    the bare list. Raises ClipadError when there are layers but none carries a type field (the
    engine was built without DETAILED profiling verbosity, or the JSON has an unknown shape)."""
    layers = info.get("Layers", []) if isinstance(info, dict) else info if isinstance(info, list) else []
    counts: dict[str, int] = {}
    typed = False
    for layer in layers:
        typed = _layer_types(layer)[1] or typed
        kind = layer_kind(layer)
        counts[kind] = counts.get(kind, 0) + 1
    if layers and not typed:
        sample = next((lay for lay in layers if isinstance(lay, dict)), None)
        keys = sorted({str(k) for t in (sample or {}).get("Outputs", []) if isinstance(t, dict) for k in t}) if sample else []
        raise ClipadError("the engine inspector's JSON gives no layer data types "
                          f"(tensor keys: {', '.join(keys) if keys else 'none; layers are ' + type(layers[0]).__name__}); "
                          "cannot check the engine's precision")
    return counts


def _layer_precisions(trt, engine) -> dict[str, int]:
    # ICudaEngine.create_engine_inspector / EngineInspector.get_engine_information(format):
    # python/src/infer/pyCore.cpp (main @a892d22267d9) lines 1523 and 1389; LayerInformationFormat.JSON line 1380.
    inspector = engine.create_engine_inspector()
    return count_layer_precisions(json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)))


# --------------------------------------------------------------------------------------------
# Choices made before the build (pure: testable without TensorRT)
# --------------------------------------------------------------------------------------------


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


def plan_source(trt_version: str, precisions: Iterable[str], int8: bool = False) -> tuple[str, str]:
    """(source graph, engine precision) for a build: the same on every supported major.

    ``precisions``: the manifest's servable graphs; ``int8``: build from the calibrated QDQ graph.
    """
    if trt_major(trt_version) < MIN_TRT_MAJOR:
        raise ClipadError(f"TensorRT {trt_version} is too old: clipad builds strongly typed engines, which need "
                          f"TensorRT {MIN_TRT_MAJOR} or newer")
    if int8:
        return ONNX_INT8, "int8"
    if "fp16" in precisions:
        return ONNX_FP16, "fp16"
    return ONNX_FP32, "fp32"


def network_flags(trt_version: str, strongly_typed_flag: int) -> int:
    """``Builder.create_network`` flags for a strongly typed network: the STRONGLY_TYPED bit on
    TensorRT 10; nothing on 11, where the flag is deprecated and ignored (always strongly typed).
    ``strongly_typed_flag``: ``int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)``."""
    return 0 if trt_major(trt_version) >= 11 else 1 << strongly_typed_flag


def default_opt_batch(max_batch: int) -> int:
    """The batch TensorRT tunes kernels for when --opt-batch is not given: a typical serving batch."""
    return max(1, min(OPT_BATCH_CAP, max_batch))


def check_opt_batch(opt_batch: int | None, max_batch: int) -> int:
    """``opt_batch`` (default: ``default_opt_batch``) when 1 <= it <= ``max_batch``; one line otherwise."""
    if opt_batch is None:
        return default_opt_batch(max_batch)
    if isinstance(opt_batch, bool) or not isinstance(opt_batch, int) or not 1 <= opt_batch <= max_batch:
        raise ClipadError(f"--opt-batch must be between 1 and the max batch ({max_batch}), got {opt_batch}")
    return opt_batch


def profile_shapes(meta: EngineMeta) -> dict[str, tuple[int, ...]]:
    """The input's min/opt/max shapes a plan was built for (what ``ICudaEngine.get_tensor_profile_shape``
    returns for profile 0, pyCore.cpp main line 1508), from its sidecar."""
    dims = [int(d) for d in meta.input.shape[1:]]
    return {k: (getattr(meta.profile, k), *dims) for k in ("min", "opt", "max")}


# --------------------------------------------------------------------------------------------
# Refusing plans that do not fit (the backend calls check_plan at load)
# --------------------------------------------------------------------------------------------


def require_tensorrt():
    """Import tensorrt or fail in one line that says how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ClipadError(
            "--engine needs TensorRT and an NVIDIA GPU: pip install --extra-index-url https://pypi.nvidia.com "
            "'clipad[gpu]' (TensorRT wheels come from NVIDIA's index); ONNX artifacts work without it"
        ) from None
    return trt


def gpu_identity() -> dict[str, Any]:
    """Name and compute capability of GPU 0 (through torch, which every install has)."""
    import torch

    if not torch.cuda.is_available():
        raise ClipadError("building or loading a TensorRT engine needs an NVIDIA GPU, and torch sees none")
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


_REBUILD = ("rebuild it with `clipad export --engine` (same options; see the manifest), or for an INT8 plan "
            "`clipad export --engine --precision int8 --out DIR`")


def check_plan_compat(meta: EngineMeta | Mapping[str, Any], trt_version: str, gpu: dict[str, Any]) -> None:
    """Refuse a plan built by another TensorRT version or on another GPU model, in one line.

    ``meta``: the plan's sidecar, or a mapping with its tensorrt, gpu and compute_capability keys.
    """
    if isinstance(meta, EngineMeta):
        meta = meta.model_dump()
    built = f"TensorRT {meta.get('tensorrt')} on {meta.get('gpu')} (sm {meta.get('compute_capability')})"
    here = f"TensorRT {trt_version} on {gpu['gpu']} (sm {gpu['compute_capability']})"
    if meta.get("tensorrt") != trt_version or meta.get("gpu") != gpu["gpu"] or meta.get("compute_capability") != gpu["compute_capability"]:
        raise ClipadError(
            f"{PLAN} was built with {built}, this machine has {here}; TensorRT plans only run where they were "
            "built: rebuild here with `clipad export --engine` (same options; see the manifest)"
        )


def check_plan_shapes(meta: EngineMeta, manifest: Manifest) -> None:
    """Refuse, in one line, a plan built for other input shapes or batch sizes than the artifacts
    serve: input name, dtype and image dims against the manifest's graph input; the profile must
    serve batch 1 to the manifest's max batch (its opt batch lies in between by construction)."""
    spec = manifest.onnx.inputs[0]
    got, p = meta.input, meta.profile
    problems = []
    if got.name != spec.name or got.dtype != spec.dtype:
        problems.append(f"input {got.name} ({got.dtype}), the graph's is {spec.name} ({spec.dtype})")
    if list(got.shape[1:]) != list(spec.shape[1:]):
        problems.append(f"input shape {_dims(got.shape)}, the artifacts' is {_dims(spec.shape)}")
    if p.min != 1 or p.max != manifest.max_batch:
        problems.append(f"batch {p.min}..{p.max} (opt {p.opt}), the artifacts serve batch 1..{manifest.max_batch}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ClipadError(f"{PLAN} was built for other shapes: {problems[0]}{more}; {_REBUILD}")


def check_plan_source(meta: EngineMeta, manifest: Manifest) -> None:
    """Refuse a plan whose source graph is no longer the artifacts' graph of that name (e.g. the
    INT8 graph was recalibrated after the INT8 plan was built)."""
    current = manifest.files.get(meta.onnx)
    if current != meta.onnx_sha256:
        what = f"{meta.onnx} has changed since" if current else f"{meta.onnx} is no longer in the artifacts, though"
        raise ClipadError(f"{PLAN} is stale: {what} the plan was built from it; {_REBUILD}")


def check_plan(meta: EngineMeta, manifest: Manifest, trt_version: str, gpu: dict[str, Any]) -> None:
    """Everything a plan must satisfy before it is loaded: built here (TensorRT version and GPU),
    for these shapes and batch sizes, from the artifacts' current graph. One line on failure."""
    check_plan_compat(meta, trt_version, gpu)
    check_plan_shapes(meta, manifest)
    check_plan_source(meta, manifest)


def _dims(shape: Iterable[Any]) -> str:
    return "x".join(str(d) for d in shape)


def timing_cache_path(trt_version: str, gpu: dict[str, Any]) -> Path:
    safe = "".join(c if c.isalnum() else "_" for c in f"{gpu['gpu']}_{trt_version}")
    return Path.home() / ".cache" / "clipad" / f"trt_timing_{safe}.cache"


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


def build_engine(stage: Path, manifest: Manifest, workspace_gib: int = WORKSPACE_GIB, int8: bool = False,
                 out_dir: Path | None = None, opt_batch: int | None = None) -> EngineMeta:
    """Build ``model.plan`` + ``model.plan.json`` from the graphs in ``stage`` into ``out_dir``
    (default ``stage``); returns the sidecar's content.

    The source graph and precision come from ``plan_source`` (``int8``: ``model.int8.onnx``, QDQ
    from `clipad calibrate --int8`); the network is strongly typed and no precision flag is set.
    ``opt_batch``: the batch the kernels are tuned for (default ``default_opt_batch``); the
    profile serves batch 1..max batch.
    """
    trt = require_tensorrt()
    version = trt.__version__
    src_name, precision = plan_source(version, manifest.precisions, int8)
    opt = check_opt_batch(opt_batch, manifest.max_batch)
    gpu = gpu_identity()
    src = stage / src_name
    if not src.is_file():
        raise ClipadError(f"cannot build the engine: {src.name} was not exported"
                          + (" (make it with `clipad calibrate --int8`)" if int8 else ""))
    problems = unsupported_ops(src)
    if problems:
        raise ClipadError(f"TensorRT cannot parse {src.name}: {problems[0]} ({len(problems)} problems)")

    # Logger, Builder, create_network(flags), OnnxParser(network, logger), parse_from_file,
    # num_errors, get_error(i).desc(): pyCore.cpp (main @a892d22267d9) lines 996, 1782, 1787;
    # python/src/parsers/pyOnnx.cpp lines 174, 182, 190, 191, 242 (same names in release/10.0).
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(version, int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise ClipadError(f"TensorRT could not parse {src.name}: {errors[0] if errors else 'unknown error'}")
    # set_memory_pool_limit (line 1711), profiling_verbosity (1734): DETAILED so that the
    # inspector lists tensor types; create_optimization_profile (1792), set_shape(input, min, opt,
    # max) (1040), add_optimization_profile (1724); create/set/get_timing_cache (1738-1745).
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    spec = manifest.onnx.inputs[0]
    dims = tuple(int(d) for d in spec.shape[1:])
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.name, (1, *dims), (opt, *dims), (manifest.max_batch, *dims))
    config.add_optimization_profile(profile)
    cache_file = timing_cache_path(version, gpu)
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)  # pyCore.cpp line 1798: None on failure
    if plan is None:
        raise ClipadError("TensorRT failed to build the engine (see the TensorRT log above)")
    build_s = time.perf_counter() - t0
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))

    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(plan))  # pyCore.cpp lines 1833-1838
    if engine is None:
        raise ClipadError("TensorRT built a plan it cannot load (see the TensorRT log above); nothing was written")
    layers = _layer_precisions(trt, engine)
    if precision == "fp16" and layers.get("fp16", 0) == 0:
        raise ClipadError("the TensorRT engine has no FP16 layer although it was built from the FP16 graph; nothing was written")
    if precision == "int8" and layers.get("int8", 0) == 0:
        raise ClipadError("the TensorRT engine has no INT8 layer although the graph is quantised; nothing was written")
    meta = sidecar(manifest, src, precision, opt, version, gpu, layers, build_s)
    # The built engine's own profile (get_tensor_profile_shape, pyCore.cpp line 1508) must be the one recorded.
    built = [tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(spec.name, 0)]
    wanted = list(profile_shapes(meta).values())
    if built != wanted:
        raise ClipadError(f"the TensorRT engine's profile is {built}, {wanted} was requested; nothing was written")
    out_dir = out_dir or stage
    (out_dir / PLAN).write_bytes(bytes(plan))
    meta.write(out_dir / PLAN_META)
    return meta


def sidecar(manifest: Manifest, src: Path, precision: str, opt_batch: int, trt_version: str, gpu: dict[str, Any],
            layers: dict[str, int], build_s: float) -> EngineMeta:
    """The sidecar (``model.plan.json``) of a plan built from ``src`` for ``manifest``: strongly
    typed, profile batch 1..max batch tuned for ``opt_batch``, the graph input's name, dtype and dims."""
    spec = manifest.onnx.inputs[0]
    total = sum(layers.values()) or 1
    return EngineMeta.create(
        tensorrt=trt_version,
        **gpu,
        category=manifest.category,
        input={"name": spec.name, "dtype": spec.dtype, "shape": ["batch", *spec.shape[1:]]},
        profile={"min": 1, "opt": opt_batch, "max": manifest.max_batch},
        onnx=src.name,
        onnx_sha256=file_sha256(src),
        precision=precision,
        strongly_typed=True,
        layers=layers,
        fp16_layer_fraction=round(layers.get("fp16", 0) / total, 4),
        build_s=round(build_s, 1),
    )


def add_int8_engine(art: Artifacts, workspace_gib: int = WORKSPACE_GIB, opt_batch: int | None = None) -> EngineMeta:
    """Build the engine from ``model.int8.onnx`` into an existing artifact directory: built in a
    temporary folder there, renamed into place, and the manifest (hashes, engine) written last."""
    with art.writing():
        art.verified_path(ONNX_INT8)
        with tempfile.TemporaryDirectory(dir=art.root) as tmp:
            meta = build_engine(art.root, art.manifest, workspace_gib, int8=True, out_dir=Path(tmp), opt_batch=opt_batch)
            for name in (PLAN, PLAN_META):
                os.replace(Path(tmp) / name, art.root / name)
        art.update(art.manifest.with_engine(meta, hash_files(art.root, [PLAN, PLAN_META])))
    return meta


def int8_engine(root: str | Path, workspace_gib: int = WORKSPACE_GIB, opt_batch: int | None = None) -> EngineMeta:
    """`clipad export --engine --precision int8`: the engine from the calibrated INT8 graph of the
    artifact directory ``root``, in place (one line when there is no INT8 graph or no TensorRT)."""
    art = load_artifacts(root)
    if not art.has(ONNX_INT8):
        raise ClipadError(f"{root} has no {ONNX_INT8}: run `clipad calibrate --artifacts {root} --int8 --images DIR` first")
    check_opt_batch(opt_batch, art.manifest.max_batch)
    require_tensorrt()
    return add_int8_engine(art, workspace_gib, opt_batch)
