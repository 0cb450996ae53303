"""The TensorRT ONNX parser's operator matrix and per-input rules, checked on a graph without
TensorRT (``unsupported_ops``): it runs wherever the export runs, and before every build."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# Data types per operator, from onnx-tensorrt docs/operators.md (the TensorRT 10.0 matrix, branch
# 10.1-GA @96e781103cfc, the newest copy that could be read here; later releases' matrices were
# not available), for every operator the clipad graphs use or could plausibly gain. The list applies to an operator's
# DATA inputs: index/shape/axes inputs (``_INDEX_INPUTS``), Where's condition and the scale and
# zero point of QuantizeLinear/DequantizeLinear follow their own rules below.
_F = {"float32", "float16", "bfloat16"}
_I = {"int32", "int64"}
_Q = {"int8", "float8e4m3fn", "int4"}  # TensorRT's quantized types (DequantizeLinear row: INT8, FP8, INT4)
TRT_OPS: dict[str, set[str]] = {
    **{
        op: _F | _I
        for op in (
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Equal",
            "Max",
            "Min",
            "Neg",
            "Mod",
            "Greater",
            "Less",
            "ReduceSum",
            "ReduceL2",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "Range",
            "Relu",
            "Abs",
            "Sign",
            "Pad",
            "TopK",
            "ArgMax",
            "LessOrEqual",
            "GreaterOrEqual",
        )
    },
    **{
        op: _F | _I | {"bool"}
        for op in (
            "Concat",
            "Expand",
            "Gather",
            "Identity",
            "Reshape",
            "Shape",
            "Slice",
            "Squeeze",
            "Unsqueeze",
            "Transpose",
            "Where",
            "Tile",
            "Split",
            "Flatten",
            "ConstantOfShape",
            "GatherElements",
            "EyeLike",
        )
    },
    **{
        op: _F
        for op in (
            "Conv",
            "Einsum",
            "Erf",
            "Exp",
            "Log",
            "Sqrt",
            "Sigmoid",
            "Tanh",
            "Softmax",
            "MatMul",
            "Gemm",
            "LayerNormalization",
            "Clip",
            "Resize",
            "Reciprocal",
            "Floor",
            "Ceil",
            "Round",
            "Pow",
            "CumSum",
            "MaxPool",
        )
    },
    **{op: {"bool"} for op in ("And", "Or", "Not")},
    "Cast": _F | _I | {"uint8", "bool"},
    "Constant": _F | _I | {"bool"},
    "Gelu": _F | _I | {"int8"},
    "QuantizeLinear": _F,  # data input x; scale and zero point: _qdq_problems
    "DequantizeLinear": _Q,  # data input x
}
# Inputs that carry indices, shapes, axes, pads or counts (int32/int64) rather than data.
_INDEX_INPUTS: dict[str, set[int]] = {
    "Gather": {1},
    "GatherElements": {1},
    "Reshape": {1},
    "Expand": {1},
    "Tile": {1},
    "Slice": {1, 2, 3, 4},
    "Squeeze": {1},
    "Unsqueeze": {1},
    "Split": {1},
    "ConstantOfShape": {0},
    "Pad": {1, 3},
    "TopK": {1},
    "CumSum": {1},
    "Resize": {3},
    **{op: {1} for op in ("ReduceSum", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin")},
}
_BOOL_INPUTS: dict[str, set[int]] = {"Where": {0}}
_AXES_CONSTANT = ("ReduceSum", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "Squeeze", "Slice", "CumSum")
TOPK_MAX_K = 3840  # operators.md, TopK: "`K` input must be less than 3840"

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
    values = list(g.input) + list(g.output) + list(g.value_info)
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in values
        if v.type.tensor_type.HasField("shape")
    }
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
                    problems.append(
                        f"{where}: uint8 input '{name}'; "
                        "TensorRT takes uint8 only as a network input straight into a Cast"
                    )
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
        problems += [f"{where}: {p}" for p in _restrictions(n, consts, shapes)]
        for name in n.output:
            if types.get(name) == onnx.TensorProto.UINT8 and name not in io_names:
                problems.append(f"{where}: uint8 output '{name}' inside the network")
    return problems


def _restrictions(
    n: onnx.NodeProto, consts: Mapping[str, onnx.TensorProto], shapes: Mapping[str, list[int | None]]
) -> list[str]:
    """The matrix's "Restrictions" column (10.1-GA docs/operators.md) and the importers' checks
    (onnxOpImporters.cpp, importerUtils.cpp at the same commit) for the operators clipad's graphs
    hold where a graph could break them:
    - TopK: ``K`` a build-time constant below 3840, ``sorted`` 1;
    - the reductions, Squeeze, Slice, CumSum: ``axes`` (an input from opset 13/18) an initializer;
    - EyeLike: a rank-2 input of static dimensions (importer: "Eyelike does not work for
      dynamically shaped tensors");
    - MaxPool: 1-D (the importer expands a rank-3 input to 2-D, poolingHelper), 2-D or 3-D, no
      ``Indices`` output, ``dilations`` empty or all ones.
    """
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    op, out = n.op_type, []
    if op == "TopK":
        k = consts.get(n.input[1]) if len(n.input) > 1 else None
        if k is None:
            out.append(f"K '{n.input[1] if len(n.input) > 1 else ''}' is not a build-time constant")
        elif int(numpy_helper.to_array(k).reshape(-1)[0]) >= TOPK_MAX_K:
            out.append(f"K {int(numpy_helper.to_array(k).reshape(-1)[0])}: TensorRT takes K < {TOPK_MAX_K}")
        if attrs.get("sorted", 1) != 1:
            out.append("sorted 0: TensorRT needs sorted 1")
    elif op in _AXES_CONSTANT:
        index = 3 if op == "Slice" else 1
        if len(n.input) > index and n.input[index] and n.input[index] not in consts:
            out.append(f"axes '{n.input[index]}' is not a build-time constant")
    elif op == "EyeLike":
        dims = shapes.get(n.input[0])
        if dims is None or len(dims) != 2 or None in dims:
            out.append(f"input '{n.input[0]}' has dimensions {dims}: TensorRT needs them static (rank 2)")
    elif op == "MaxPool":
        rank = len(shapes.get(n.input[0]) or [])
        if rank not in (3, 4, 5):
            out.append(f"input of rank {rank}: TensorRT pools 1-D (rank 3), 2-D or 3-D")
        if len(n.output) > 1 and n.output[1]:
            out.append("Indices output: not supported by TensorRT")
        if any(d != 1 for d in attrs.get("dilations", [])):
            out.append(f"dilations {attrs['dilations']}: TensorRT needs all ones")
    return out


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
            problems.append(
                f"per-channel scale on '{x}', which is not a weight: TensorRT quantizes activations per tensor only"
            )
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
