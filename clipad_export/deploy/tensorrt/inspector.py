"""Layer precisions from TensorRT's engine inspector JSON, in both the TensorRT 10 and the 11 shape."""

from __future__ import annotations

import json
import re
from typing import Any

from clipad.core.errors import ClipadError

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
    "FP32": "fp32",
    "FLOAT": "fp32",
    "FLOAT32": "fp32",
    "KFLOAT": "fp32",
    "FP16": "fp16",
    "HALF": "fp16",
    "FLOAT16": "fp16",
    "KHALF": "fp16",
    "BF16": "bf16",
    "BFLOAT16": "bf16",
    "KBF16": "bf16",
    "INT8": "int8",
    "KINT8": "int8",
    "FP8": "fp8",
    "KFP8": "fp8",
    "FP4": "fp4",
    "INT4": "int4",
    "UINT8": "uint8",
    "KUINT8": "uint8",
    "INT32": "int32",
    "KINT32": "int32",
    "INT64": "int64",
    "KINT64": "int64",
    "BOOL": "bool",
    "BOOLEAN": "bool",
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
    """ "int8" when any input or output is INT8 (a quantize layer, or a GEMM/conv that fused the
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


def _dynamic_dims(layers: list) -> bool:
    """Whether any tensor of the layers has a -1 dimension (what the inspector prints without an
    execution context whose input shapes are set)."""
    for layer in layers:
        for t in ((layer.get("Inputs") or []) + (layer.get("Outputs") or [])) if isinstance(layer, dict) else []:
            dims = t.get("Dimensions") if isinstance(t, dict) else None
            if isinstance(dims, list) and -1 in dims:
                return True
    return False


def count_layer_precisions(info: Any) -> dict[str, int]:
    """Layers by kind (``layer_kind``) in the engine inspector's JSON (``get_engine_information``
    with ``LayerInformationFormat.JSON``): a ``{"Layers": [...]}`` object (TensorRT 10 and 11) or
    the bare list. Raises ClipadError when there are layers but none carries a type field (the
    engine was built without DETAILED profiling verbosity, the inspector had no execution context
    with the input shapes set, or the JSON has an unknown shape)."""
    layers = info.get("Layers", []) if isinstance(info, dict) else info if isinstance(info, list) else []
    counts: dict[str, int] = {}
    typed = False
    for layer in layers:
        typed = _layer_types(layer)[1] or typed
        kind = layer_kind(layer)
        counts[kind] = counts.get(kind, 0) + 1
    if layers and not typed:
        sample = next((lay for lay in layers if isinstance(lay, dict)), None)
        keys = (
            sorted({str(k) for t in (sample or {}).get("Outputs", []) if isinstance(t, dict) for k in t})
            if sample
            else []
        )
        why = (
            "; its dimensions are -1: the inspector was read without an execution context whose input shapes are set"
            if _dynamic_dims(layers)
            else ""
        )
        raise ClipadError(
            "the engine inspector's JSON gives no layer data types "
            f"(tensor keys: {', '.join(keys) if keys else 'none; layers are ' + type(layers[0]).__name__}){why}; "
            "cannot check the engine's precision"
        )
    return counts


def engine_layer_precisions(trt, engine, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Layers by kind of a built ``engine``, read through an execution context whose inputs have
    ``input_shapes`` (name -> shape, e.g. the profile's opt shape).

    The context matters: "Setting the execution context and specifying all the input shapes
    allows the inspector to calculate concrete dimensions for any dynamic shapes and display
    their format information. Otherwise, values dependent on input shapes will be displayed as -1
    and format information will not be shown." (include/NvInferRuntime.h, IEngineInspector,
    release/10.16 @d0faf303 lines 5292-5296, main @a892d222 lines 4913-4917). TensorRT 10 keeps
    the data type in that format field, so without a context no layer would show a type.
    Python names (python/src/infer/pyCore.cpp, release/10.16 / main): create_execution_context
    (1470 / 1422), IExecutionContext.set_input_shape (1353 / 1309, returns False for a shape
    outside the profile), create_engine_inspector (1523 on main), the read/write property
    EngineInspector.execution_context (1430 / 1385), get_engine_information (1389 on main),
    LayerInformationFormat.JSON (1380 on main)."""
    context = engine.create_execution_context()
    if context is None:
        raise ClipadError(
            "TensorRT could not create an execution context for the engine (GPU memory?); nothing was written"
        )
    for name, shape in input_shapes.items():
        if not context.set_input_shape(name, tuple(int(d) for d in shape)):
            raise ClipadError(f"TensorRT refused the input shape {tuple(shape)} for '{name}'; nothing was written")
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    return count_layer_precisions(json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)))
