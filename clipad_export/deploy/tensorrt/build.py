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

TF32 is cleared on every build (TensorRT enables it by default), so FP32 layers compute in FP32.
After the build the engine inspector's JSON, read through an execution context with the opt
shape set, gives every layer's tensor types (``count_layer_precisions``); an FP16 build without
an FP16 layer, or an INT8 build without an INT8 layer, is an error. The timing cache is read
checked and written in one step (``read_timing_cache``, ``write_timing_cache``). The plan stays
a plain plan (trtexec and Triton load it); its metadata lives in ``model.plan.json``
(``EngineMeta``).

``unsupported_ops`` checks an ONNX graph against the TensorRT ONNX parser's operator matrix and
its per-input rules, which can run where TensorRT cannot.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipad.core.atomic import atomic_path
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
# The timing cache on disk: this header line, then TensorRT's serialized cache. The digest makes a
# cache that was cut short or altered since it was written detectable before TensorRT reads it.
_CACHE_MAGIC = b"CLIPAD-TRT-TIMING-CACHE-1 "


def _stderr(message: str) -> None:
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def frame_timing_cache(data: bytes) -> bytes:
    """The file content for TensorRT's serialized timing cache ``data``: a header with its sha256."""
    return _CACHE_MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data


def unframe_timing_cache(blob: bytes) -> bytes | None:
    """TensorRT's serialized cache from a file written by ``frame_timing_cache``; None when the
    file is not one or its content no longer matches its digest (cut short, altered, another format)."""
    head, sep, data = blob.partition(b"\n")
    if not sep or not head.startswith(_CACHE_MAGIC):
        return None
    return data if hashlib.sha256(data).hexdigest().encode() == head[len(_CACHE_MAGIC) :] else None


def read_timing_cache(path: Path, warn: Callable[[str], None] = _stderr) -> bytes:
    """TensorRT's serialized timing cache saved at ``path``; b"" (a new cache) when there is none,
    and, with a warning, when it cannot be read or is damaged (never handed to a build)."""
    if not path.is_file():
        return b""
    try:
        data = unframe_timing_cache(path.read_bytes())
    except OSError as err:
        warn(f"the TensorRT timing cache {path} cannot be read ({err.strerror}); building without it")
        return b""
    if data is None:
        warn(f"the TensorRT timing cache {path} is damaged or not clipad's; it is discarded and rebuilt")
        return b""
    return data


def write_timing_cache(path: Path, data: bytes) -> None:
    """Save TensorRT's serialized timing cache ``data`` at ``path`` in one step (core.atomic:
    temporary file, fsync, rename), so that an interrupted build leaves the old cache or the new."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(frame_timing_cache(data))


def load_timing_cache(config: Any, path: Path, warn: Callable[[str], None] = _stderr) -> Any:
    """The builder's timing cache from ``path`` (``read_timing_cache``); one TensorRT refuses is
    discarded with a warning and an empty one used.

    ``IBuilderConfig.create_timing_cache(bytes)`` (pyCore.cpp main @a892d222 line 1738) wraps the
    C++ ``createTimingCache``, which is noexcept and returns nullptr when it cannot read the blob
    (NvInfer.h main lines 10922-10939; shared/utils/cacheUtils.cpp lines 67-71 checks nullptr), so
    None is checked as well as an exception (Polygraphy's loader.py lines 617-621 guards it so)."""
    data = read_timing_cache(path, warn)
    cache = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # noqa: BLE001 - any refusal means the same: do not use it
            cache = None
        if cache is None:
            warn(f"TensorRT refused the timing cache {path}; it is discarded and rebuilt")
    return cache if cache is not None else config.create_timing_cache(b"")


def build_engine(
    stage: Path,
    manifest: Manifest,
    workspace_gib: int = WORKSPACE_GIB,
    int8: bool = False,
    out_dir: Path | None = None,
    opt_batch: int | None = None,
) -> EngineMeta:
    """Build ``model.plan`` + ``model.plan.json`` from the graphs in ``stage`` into ``out_dir``
    (default ``stage``); returns the sidecar's content.

    The source graph and precision come from ``plan_source`` (``int8``: ``model.int8.onnx``, QDQ
    from `clipad calibrate --int8`); the network is strongly typed, no precision flag is set and
    TF32 is cleared. ``opt_batch``: the batch the kernels are tuned for (default ``default_opt_batch``); the
    profile serves batch 1..max batch.
    """
    trt = require_tensorrt()
    version = trt.__version__
    src_name, precision = plan_source(version, manifest.precisions, int8)
    opt = check_opt_batch(opt_batch, manifest.max_batch)
    gpu = gpu_identity()
    src = stage / src_name
    if not src.is_file():
        raise ClipadError(
            f"cannot build the engine: {src.name} was not exported"
            + (" (make it with `clipad calibrate --int8`)" if int8 else "")
        )
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
    # TF32 is on by default (BuilderFlag.kTF32: "Allow (but not require) computations on tensors of
    # type DataType::kFLOAT to use TF32 ... Enabled by default", NvInfer.h release/10.16 lines
    # 10486-10489, main lines 9973-9976). Strong typing does not touch it (the flag is "orthogonal
    # to typing", main .agents/skills/trt-strong-typing-migration/SKILL.md line 177): the FP32 plan
    # and the FP16 graph's FP32 islands would round their matmul inputs to 10-bit mantissas and
    # miss the FP32 parity limit. clear_flag: pyCore.cpp release/10.16 line 1813, main line 1719.
    config.clear_flag(trt.BuilderFlag.TF32)
    cache_file = timing_cache_path(version, gpu)
    if not config.set_timing_cache(load_timing_cache(config, cache_file), ignore_mismatch=True):
        _stderr("TensorRT did not take the timing cache; building without it")
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)  # pyCore.cpp line 1798: None on failure
    if plan is None:
        raise ClipadError("TensorRT failed to build the engine (see the TensorRT log above)")
    build_s = time.perf_counter() - t0
    try:
        write_timing_cache(
            cache_file, bytes(config.get_timing_cache().serialize())
        )  # serialize: pyCore.cpp main line 1686
    except OSError as err:
        _stderr(
            f"the TensorRT timing cache could not be saved to {cache_file} ({err.strerror or err}); "
            "the next build times its layers again"
        )

    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(plan))  # pyCore.cpp lines 1833-1838
    if engine is None:
        raise ClipadError("TensorRT built a plan it cannot load (see the TensorRT log above); nothing was written")
    opt_shape = (opt, *(int(d) for d in spec.shape[1:]))
    layers = engine_layer_precisions(trt, engine, {spec.name: opt_shape})
    if precision == "fp16" and layers.get("fp16", 0) == 0:
        raise ClipadError(
            "the TensorRT engine has no FP16 layer although it was built from the FP16 graph; nothing was written"
        )
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


def sidecar(
    manifest: Manifest,
    src: Path,
    precision: str,
    opt_batch: int,
    trt_version: str,
    gpu: dict[str, Any],
    layers: dict[str, int],
    build_s: float,
) -> EngineMeta:
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
        tf32=False,
    )


def add_int8_engine(art: Artifacts, workspace_gib: int = WORKSPACE_GIB, opt_batch: int | None = None) -> EngineMeta:
    """Build the engine from ``model.int8.onnx`` into an existing artifact directory: built in a
    temporary folder there, renamed into place, and the manifest (hashes, engine) written last."""
    with art.writing():
        art.verified_path(ONNX_INT8)
        with tempfile.TemporaryDirectory(dir=art.root) as tmp:
            meta = build_engine(
                art.root, art.manifest, workspace_gib, int8=True, out_dir=Path(tmp), opt_batch=opt_batch
            )
            for name in (PLAN, PLAN_META):
                os.replace(Path(tmp) / name, art.root / name)
        art.update(art.manifest.with_engine(meta, hash_files(art.root, [PLAN, PLAN_META])))
    return meta


def int8_engine(root: str | Path, workspace_gib: int = WORKSPACE_GIB, opt_batch: int | None = None) -> EngineMeta:
    """`clipad export --engine --precision int8`: the engine from the calibrated INT8 graph of the
    artifact directory ``root``, in place (one line when there is no INT8 graph or no TensorRT)."""
    art = load_artifacts(root)
    if not art.has(ONNX_INT8):
        raise ClipadError(
            f"{root} has no {ONNX_INT8}: run `clipad calibrate --artifacts {root} --int8 --images DIR` first"
        )
    check_opt_batch(opt_batch, art.manifest.max_batch)
    require_tensorrt()
    return add_int8_engine(art, workspace_gib, opt_batch)
