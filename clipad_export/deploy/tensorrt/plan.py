"""What is decided before a build and checked at every load, without TensorRT where possible: the
source graph and network flags per TensorRT major, the optimisation profile, and the refusal of a
plan that does not fit this machine, these artifacts or their current graphs (``check_plan``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from clipad.core.errors import ClipadError
from clipad.deploy.manifest import ONNX_FP16, ONNX_FP32, ONNX_INT8, PLAN, EngineMeta, Manifest

MIN_TRT_MAJOR = 10  # STRONGLY_TYPED networks (the only kind clipad builds) exist from TensorRT 10.0
OPT_BATCH_CAP = 8  # the default opt batch: a typical serving batch, capped by --max-batch


def trt_major(version: str) -> int:
    return int(version.split(".")[0])


def plan_source(trt_version: str, precisions: Iterable[str], int8: bool = False) -> tuple[str, str]:
    """(source graph, engine precision) for a build: the same on every supported major.

    ``precisions``: the manifest's servable graphs; ``int8``: build from the calibrated QDQ graph.
    """
    if trt_major(trt_version) < MIN_TRT_MAJOR:
        raise ClipadError(
            f"TensorRT {trt_version} is too old: clipad builds strongly typed engines, which need "
            f"TensorRT {MIN_TRT_MAJOR} or newer"
        )
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


_REBUILD = (
    "rebuild it with `clipad export --engine` (same options; see the manifest), or for an INT8 plan "
    "`clipad export --engine --precision int8 --out DIR`"
)


def check_plan_compat(meta: EngineMeta | Mapping[str, Any], trt_version: str, gpu: dict[str, Any]) -> None:
    """Refuse a plan built by another TensorRT version or on another GPU model, in one line.

    ``meta``: the plan's sidecar, or a mapping with its tensorrt, gpu and compute_capability keys.
    """
    if isinstance(meta, EngineMeta):
        meta = meta.model_dump()
    built = f"TensorRT {meta.get('tensorrt')} on {meta.get('gpu')} (sm {meta.get('compute_capability')})"
    here = f"TensorRT {trt_version} on {gpu['gpu']} (sm {gpu['compute_capability']})"
    if (
        meta.get("tensorrt") != trt_version
        or meta.get("gpu") != gpu["gpu"]
        or meta.get("compute_capability") != gpu["compute_capability"]
    ):
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
