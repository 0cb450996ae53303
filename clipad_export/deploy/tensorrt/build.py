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

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.deploy.artifacts import Artifacts, hash_files, load_artifacts
from clipad.deploy.manifest import ONNX_INT8, PLAN, PLAN_META, EngineMeta, Manifest
from clipad.deploy.tensorrt.inspector import engine_layer_precisions
from clipad.deploy.tensorrt.parser_check import unsupported_ops
from clipad.deploy.tensorrt.plan import (
    check_opt_batch,
    gpu_identity,
    network_flags,
    plan_source,
    profile_shapes,
    require_tensorrt,
    timing_cache_path,
)

WORKSPACE_GIB = 4

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
    layers = engine_layer_precisions(trt, engine)
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
