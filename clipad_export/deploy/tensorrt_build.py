"""TensorRT engines: build from the exported ONNX, describe them in a sidecar, refuse mismatches.

Written against the documented Python API of TensorRT 10 and 11 (neither can be installed on
the machines this project is built on; see README):
- TensorRT 10: FP16 through ``BuilderFlag.FP16`` on the FP32 graph;
- TensorRT 11 removed the FP16/INT8 builder flags: the engine is built from the mixed-precision
  ``model.fp16.onnx`` as a strongly typed network (its Cast nodes fix every layer's precision).
After the build the engine inspector lists layer precisions; an FP16 request that produced no
FP16 layer is an error (TensorRT 11 otherwise silently builds FP32 engines from old recipes).

The plan stays a plain plan (trtexec and Triton load it); its metadata lives in
``model.plan.json``: TensorRT version, GPU name and compute capability, category, input spec,
sha256 of the source ONNX, precision, profile, and the share of FP16 layers.

``unsupported_ops`` checks an ONNX graph against the TensorRT ONNX parser's published operator
matrix (onnx-tensorrt docs/operators.md, TensorRT 10.15; types per operator), which can run
where TensorRT cannot.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import onnx

from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.deploy.artifacts import Artifacts, hash_files, load_artifacts
from clipad.deploy.manifest import ONNX_FP16, ONNX_FP32, ONNX_INT8, PLAN, PLAN_META, EngineMeta, Manifest

# Supported element types per operator, from the TensorRT 10.15 ONNX parser matrix, for every
# operator the clipad graphs use or could plausibly gain. UINT8 is allowed only as a network
# input/output and as the input of Cast.
_F = {"float32", "float16", "bfloat16"}
_I = {"int32", "int64"}
TRT_OPS: dict[str, set[str]] = {
    **{op: _F | _I for op in ("Add", "Sub", "Mul", "Div", "Equal", "Max", "Min", "Neg", "Pow", "Mod", "Greater", "Less",
                              "ReduceSum", "ReduceL2", "ReduceMax", "ReduceMean", "ReduceMin", "Range", "Relu", "Abs")},
    **{op: _F | _I | {"bool"} for op in ("Concat", "Expand", "Gather", "Identity", "Reshape", "Shape", "Slice", "Squeeze",
                                       "Unsqueeze", "Transpose", "Where", "Tile", "Split", "Flatten", "ConstantOfShape")},
    **{op: _F for op in ("Conv", "Einsum", "Erf", "Exp", "Log", "Sqrt", "Sigmoid", "Tanh", "Softmax", "MatMul", "Gemm",
                         "LayerNormalization", "Clip", "Resize", "Reciprocal", "Floor", "Ceil", "Round")},
    "Cast": _F | _I | {"uint8", "bool"},
    "Constant": _F | _I | {"bool"},
    "Gelu": _F | _I,
    "QuantizeLinear": _F,
    "DequantizeLinear": {"int8", "float32", "float16", "bfloat16"},
}
_ELEM = {getattr(onnx.TensorProto, k): k.lower() for k in ("FLOAT", "FLOAT16", "BFLOAT16", "INT32", "INT64", "UINT8", "INT8", "BOOL", "DOUBLE")}
_ELEM = {k: {"float": "float32", "double": "float64"}.get(v, v) for k, v in _ELEM.items()}


def unsupported_ops(path: str | Path) -> list[str]:
    """Problems the TensorRT ONNX parser would have with this graph (empty list: none)."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    io_names = {v.name for v in g.input} | {v.name for v in g.output}
    problems = []
    for n in g.node:
        allowed = TRT_OPS.get(n.op_type)
        if allowed is None:
            problems.append(f"{n.op_type} ({n.name}): not in TensorRT's supported-operator table")
            continue
        # The matrix gives input types; outputs follow from them (Equal -> bool, Shape -> int64).
        for i, name in enumerate(n.input):
            if not name or name not in types or (n.op_type == "Gather" and i == 1):
                continue
            dtype = _ELEM.get(types[name], str(types[name]))
            if dtype == "uint8":
                if not (n.op_type == "Cast" and name in io_names):
                    problems.append(f"{n.op_type} ({n.name}): uint8 input '{name}'; TensorRT takes uint8 only as a network input straight into a Cast")
            elif dtype not in allowed:
                problems.append(f"{n.op_type} ({n.name}): {dtype} input '{name}' is not supported by TensorRT")
        for name in n.output:
            if types.get(name) == onnx.TensorProto.UINT8 and name not in io_names:
                problems.append(f"{n.op_type} ({n.name}): uint8 output '{name}' inside the network")
    return problems


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


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


def gpu_identity() -> dict[str, Any]:
    """Name and compute capability of GPU 0 (through torch, which every install has)."""
    import torch

    if not torch.cuda.is_available():
        raise ClipadError("building or loading a TensorRT engine needs an NVIDIA GPU, and torch sees none")
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


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


def timing_cache_path(trt_version: str, gpu: dict[str, Any]) -> Path:
    safe = "".join(c if c.isalnum() else "_" for c in f"{gpu['gpu']}_{trt_version}")
    return Path.home() / ".cache" / "clipad" / f"trt_timing_{safe}.cache"


def _layer_precisions(trt, engine) -> dict[str, int]:
    """Count engine layers by output data type, from the engine inspector's JSON."""
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    counts: dict[str, int] = {}
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict):
            continue
        outs = layer.get("Outputs") or []
        fmt = " ".join(str(o.get("Format/Datatype", "")) for o in outs if isinstance(o, dict))
        kind = ("fp16" if "Half" in fmt or "FP16" in fmt else "int8" if "Int8" in fmt or "INT8" in fmt
                else "fp32" if "Float" in fmt or "FP32" in fmt else "other")
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def build_engine(stage: Path, manifest: Manifest, workspace_gib: int = 4, int8: bool = False,
                 out_dir: Path | None = None) -> EngineMeta:
    """Build ``model.plan`` + ``model.plan.json`` from the graphs in ``stage`` into ``out_dir``
    (default ``stage``); returns the sidecar's content.

    ``int8``: build from ``model.int8.onnx`` (QDQ, `clipad calibrate --int8`) as explicit
    quantisation in a strongly typed network, where TensorRT wants no precision flags.
    """
    trt = require_tensorrt()
    gpu = gpu_identity()
    version = trt.__version__
    want_fp16 = "fp16" in manifest.precisions and not int8
    # TRT 11 networks are always strongly typed (an FP32 graph gives an FP32 engine); Q/DQ graphs too.
    strongly_typed = trt_major(version) >= 11 or int8
    src = stage / (ONNX_INT8 if int8 else ONNX_FP16 if strongly_typed and want_fp16 else ONNX_FP32)
    if not src.is_file():
        raise ClipadError(f"cannot build the engine: {src.name} was not exported"
                          + (" (make it with `clipad calibrate --int8`)" if int8 else " (export with --precision all or fp16)"))
    problems = unsupported_ops(src)
    if problems:
        raise ClipadError(f"TensorRT cannot parse {src.name}: {problems[0]} ({len(problems)} problems)")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise ClipadError(f"TensorRT could not parse {src.name}: {errors[0] if errors else 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if want_fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10
    size, max_batch = manifest.image_size, manifest.max_batch
    profile = builder.create_optimization_profile()
    profile.set_shape("image", (1, size, size, 3), (1, size, size, 3), (max_batch, size, size, 3))
    config.add_optimization_profile(profile)
    cache_file = timing_cache_path(version, gpu)
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ClipadError("TensorRT failed to build the engine (see the TensorRT log above)")
    build_s = time.perf_counter() - t0
    out_dir = out_dir or stage
    (out_dir / PLAN).write_bytes(bytes(plan))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_bytes(bytes(config.get_timing_cache().serialize()))

    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(plan))
    layers = _layer_precisions(trt, engine)
    total = sum(layers.values()) or 1
    if want_fp16 and layers.get("fp16", 0) == 0:
        raise ClipadError("the TensorRT engine has no FP16 layer although FP16 was requested; nothing was written")
    if int8 and layers.get("int8", 0) == 0:
        raise ClipadError("the TensorRT engine has no INT8 layer although the graph is quantised; nothing was written")
    meta = EngineMeta.create(
        tensorrt=version,
        **gpu,
        category=manifest.category,
        input={"name": "image", "dtype": "uint8", "shape": ["batch", size, size, 3]},
        profile={"min": 1, "opt": 1, "max": max_batch},
        onnx=src.name,
        onnx_sha256=file_sha256(src),
        precision="int8" if int8 else "fp16" if want_fp16 else "fp32",
        strongly_typed=strongly_typed,
        layers=layers,
        fp16_layer_fraction=round(layers.get("fp16", 0) / total, 4),
        build_s=round(build_s, 1),
    )
    meta.write(out_dir / PLAN_META)
    return meta


def add_int8_engine(art: Artifacts, workspace_gib: int = 4) -> EngineMeta:
    """Build the engine from ``model.int8.onnx`` into an existing artifact directory: built in a
    temporary folder there, renamed into place, and the manifest (hashes, engine) written last."""
    art.verified_path(ONNX_INT8)
    with tempfile.TemporaryDirectory(dir=art.root) as tmp:
        meta = build_engine(art.root, art.manifest, workspace_gib, int8=True, out_dir=Path(tmp))
        for name in (PLAN, PLAN_META):
            os.replace(Path(tmp) / name, art.root / name)
    art.update(art.manifest.with_engine(meta, hash_files(art.root, [PLAN, PLAN_META])))
    return meta


def int8_engine(root: str | Path, workspace_gib: int = 4) -> EngineMeta:
    """`clipad export --engine --precision int8`: the engine from the calibrated INT8 graph of the
    artifact directory ``root``, in place (one line when there is no INT8 graph or no TensorRT)."""
    art = load_artifacts(root)
    if not art.has(ONNX_INT8):
        raise ClipadError(f"{root} has no {ONNX_INT8}: run `clipad calibrate --artifacts {root} --int8 --images DIR` first")
    require_tensorrt()
    return add_int8_engine(art, workspace_gib)
