"""ONNX Runtime runner: TensorRT EP, then CUDA EP, then CPU EP, whichever really loads; the one
place the execution providers are chosen (serving, export parity, the quality gates, INT8).

``provider_config`` builds the execution providers and their options from the artifacts, the
graph served and the device, without touching a GPU (tests check it here). The runner opens the
session with them and then trusts only ``session.get_providers()``: ``get_available_providers()``
lists providers compiled into the wheel, also ones whose CUDA/cuDNN/TensorRT libraries then fail
to load (the session falls back to the CPU EP).

Option names are ONNX Runtime's own (an unknown name fails the session):
- TensorRT EP: onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_info.cc
  (``provider_option_names``) and https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html
  (bool options as Python True/False; profile shapes as ``name:d1xd2x...``, all three given
  together, compared with the cached ``.profile`` to decide whether to rebuild the engine);
- CUDA EP: onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc (``device_id``,
  ``arena_extend_strategy``, ``cudnn_conv_algo_search``, ``do_copy_in_default_stream``, ``use_tf32``).

The TensorRT EP is asked for only where the installed TensorRT has the major its library links
(``tensorrt.install.tensorrt_ep_problem``): onnxruntime-gpu 1.31.1's ``libonnxruntime_providers_tensorrt.so``
needs ``libnvinfer.so.10`` (read from the wheel), so with TensorRT 11 installed the EP cannot
load, and the CUDA EP serves with a one-line note instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipad.core.choices import check_served
from clipad.core.errors import ClipadError
from clipad.core.packages import installed_version
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import ONNX_FILES
from clipad.deploy.runners.base import Outputs, Runner
from clipad.deploy.tensorrt.install import (
    installed_tensorrt,
    linked_tensorrt_major,
    onnxruntime_tensorrt_ep_library,
    tensorrt_ep_problem,
)

TRT_EP, CUDA_EP, CPU_EP = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_PROVIDERS = (TRT_EP, CUDA_EP)
DEVICES = ("auto", "cpu", "cuda")  # and cuda:N, as torch spells a GPU index

# The TensorRT EP's caches live inside the artifact directory, beside the graphs they were built
# from. The directory is never listed in the manifest's ``files`` (only the exported files are
# hash-checked; readers check files by name, so an extra directory changes nothing), and a
# re-export replaces the whole artifact directory, cache included.
ORT_TRT_CACHE = "ort_trt_cache"
TRT_WORKSPACE_BYTES = 4 << 30  # as `clipad export --engine` (tensorrt.build.build_engine's workspace)


def parse_device(device: str) -> tuple[str, int]:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> (kind, GPU index); one line otherwise."""
    kind, _, index = device.partition(":")
    if kind in DEVICES and (not index or (kind == "cuda" and index.isdigit())):
        return kind, int(index or 0)
    raise ClipadError(f"unknown device '{device}' (use auto, cpu or cuda)")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text)


def trt_cache_dirs(
    artifacts: Artifacts, precision: str, ort_version: str | None = None, trt_version: str | None = None
) -> tuple[Path, Path]:
    """(engine cache directory, timing cache directory) for the graph of ``precision``.

    ONNX Runtime names cached engines after the model's path and subgraph, not its content, and
    asks users to delete them when the model, ONNX Runtime or TensorRT changes (TensorRT EP docs,
    trt_engine_cache_enable). So the engine directory is keyed by the graph's sha256 (from the
    manifest; `clipad calibrate --int8` rewrites model.int8.onnx under the same name) and both
    versions: a changed graph or library never meets a stale engine. The timing cache holds
    per-layer timings, is valid across graphs and named by ONNX Runtime per GPU architecture,
    so it is shared.
    """
    sha = artifacts.manifest.files.get(ONNX_FILES[precision], "")[:16] or "unhashed"
    ort_version = ort_version or installed_version("onnxruntime-gpu", "onnxruntime") or "unknown"
    trt_version = trt_version or getattr(installed_tensorrt(), "version", None) or "unknown"
    root = artifacts.root / ORT_TRT_CACHE
    return root / f"{precision}-{sha}-ort{_safe(ort_version)}-trt{_safe(trt_version)}", root


def profile_batches(artifacts: Artifacts) -> tuple[int, int, int]:
    """(min, opt, max) batch of the TensorRT EP's optimisation profile: 1; the opt batch the
    TensorRT plan records when there is one (both engines tuned alike), else the default opt
    batch of `clipad export --engine` (one rule: tensorrt.plan.default_opt_batch, imported
    only here, where a TensorRT EP is in use); the artifacts' max batch."""
    from clipad.deploy.tensorrt.plan import default_opt_batch

    max_batch = artifacts.max_batch
    engine = artifacts.manifest.engine
    opt = engine.profile.opt if engine is not None else default_opt_batch(max_batch)
    return 1, max(1, min(opt, max_batch)), max_batch


def _shape_string(name: str, shape: Sequence[int | str], batch: int) -> str:
    dims = []
    for i, d in enumerate(shape):
        if isinstance(d, str):
            if i != 0:
                raise ClipadError(
                    f"graph input '{name}' has a symbolic dimension '{d}' other than the batch; "
                    "the TensorRT execution provider needs fixed shapes there"
                )
            d = batch
        dims.append(str(d))
    return f"{name}:{'x'.join(dims)}"


def tensorrt_ep_options(
    artifacts: Artifacts,
    precision: str,
    ort_version: str | None = None,
    trt_version: str | None = None,
    device_id: int = 0,
) -> dict[str, Any]:
    """TensorRT EP options for serving the ``precision`` graph of ``artifacts``."""
    engine_dir, timing_dir = trt_cache_dirs(artifacts, precision, ort_version, trt_version)
    lo, opt, hi = profile_batches(artifacts)
    inputs = artifacts.manifest.onnx.inputs

    def shapes(batch: int) -> str:
        return ",".join(_shape_string(t.name, t.shape, batch) for t in inputs)

    return {
        "device_id": device_id,
        "trt_max_workspace_size": TRT_WORKSPACE_BYTES,
        # Precision flags match the graph served: the FP16 graph's FP16 layers only run in FP16
        # with the flag; LayerNorm stays FP32 as model.fp16.onnx keeps it. The flag makes the
        # network weakly typed FP16, so TensorRT may also lower the graph's other FP32 islands
        # (softmax logits); `clipad parity --backends onnxruntime --precision fp16` on the GPU
        # measures it. The INT8 graph is QDQ: its int8 flag without a calibration table (the
        # docs: no table for QDQ models); its unquantised rest stays FP32.
        "trt_fp16_enable": precision == "fp16",
        "trt_int8_enable": precision == "int8",
        "trt_layer_norm_fp32_fallback": precision == "fp16",
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engine_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(timing_dir),
        "trt_profile_min_shapes": shapes(lo),
        "trt_profile_opt_shapes": shapes(opt),
        "trt_profile_max_shapes": shapes(hi),
    }


def cuda_ep_options(device_id: int = 0) -> dict[str, Any]:
    """CUDA EP options: the GPU asked for (``cuda:N``; GPU 0 by default); the memory arena grows by
    what is asked, not to the next power of two (a workstation shares its GPU); the one Conv
    (patch embedding) picks its cuDNN algorithm heuristically, so a new batch size in a live run
    costs no exhaustive search; TF32 off, because the FP32 graph is held to 1e-4 of the
    reference and the FP16/INT8 graphs keep FP32 islands for accuracy."""
    return {
        "device_id": device_id,
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": True,
        "use_tf32": False,
    }


def provider_config(
    artifacts: Artifacts | None,
    precision: str,
    device: str,
    available: Sequence[str],
    ort_version: str | None = None,
    trt_version: str | None = None,
    tensorrt_ep: str | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The execution providers to ask for, in order, with their options (pure: no GPU, no files).

    ``available``: ``onnxruntime.get_available_providers()`` (a necessary condition only; the
    session says what really loaded). ``device`` cpu: the CPU EP only. auto: the GPU providers
    that are available, then the CPU EP. cuda: the same, but one line when there is none.
    ``tensorrt_ep``: why the TensorRT EP cannot load (``tensorrt.install.tensorrt_ep_problem``); it is then left out,
    as it is without ``artifacts`` (its profile and caches come from the artifact directory).
    """
    kind, index = parse_device(device)
    check_served("onnxruntime", precision)
    if kind == "cpu":
        return [(CPU_EP, {})]
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if kind == "cuda" and not gpu:
        raise ClipadError(
            "--device cuda: this onnxruntime has no GPU execution provider (it has "
            f"{', '.join(available) or 'none'}); install clipad[gpu] (onnxruntime-gpu, never beside "
            "onnxruntime: `clipad doctor` tells), or use --device cpu"
        )
    out: list[tuple[str, dict[str, Any]]] = []
    if TRT_EP in gpu and tensorrt_ep is None and artifacts is not None:
        out.append((TRT_EP, tensorrt_ep_options(artifacts, precision, ort_version, trt_version, index)))
    if CUDA_EP in gpu:
        out.append((CUDA_EP, cuda_ep_options(index)))
    out.append((CPU_EP, {}))
    return out


def _load_gpu_libraries(ort: Any, providers: Sequence[str]) -> None:
    """Make the CUDA, cuDNN and TensorRT libraries of the pip wheels findable before a GPU session:
    ``onnxruntime.preload_dlls()`` (onnxruntime >= 1.21) loads CUDA and cuDNN from the nvidia-*
    wheels, and importing tensorrt loads libnvinfer from its libs wheel, so that the provider
    libraries' DT_NEEDED entries resolve without LD_LIBRARY_PATH (not run here: no GPU)."""
    if CUDA_EP not in providers and TRT_EP not in providers:
        return
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # noqa: BLE001 - best effort; the session says what loaded
            pass
    if TRT_EP in providers:
        try:
            import tensorrt  # noqa: F401
        except Exception:  # noqa: BLE001 - the session falls back and says so
            pass


def _prepare_caches(providers: list[tuple[str, dict[str, Any]]]) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
    """Create the TensorRT EP's cache directories (only when that EP is asked for); a read-only
    artifact directory serves without caches, and the returned note says so."""
    out = []
    note = None
    for name, opts in providers:
        if name == TRT_EP:
            try:
                for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
                    Path(opts[key]).mkdir(parents=True, exist_ok=True)
            except OSError as err:
                note = (
                    f"no TensorRT engine cache ({err.strerror or err}: {err.filename}): "
                    "every session rebuilds its engine"
                )
                opts = {k: v for k, v in opts.items() if k not in ("trt_engine_cache_path", "trt_timing_cache_path")}
                opts.update(trt_engine_cache_enable=False, trt_timing_cache_enable=False)
        out.append((name, opts))
    return out, note


class OnnxRuntimeRunner(Runner):
    """An ONNX graph in an ONNX Runtime session on ``device`` (auto, cpu, cuda, cuda:N) with the
    providers of ``provider_config``; ``artifacts``: the artifact directory the graph belongs to
    (the TensorRT EP's profile and caches; without it, no TensorRT EP). ``providers``: what the
    session really loaded, the preferred first; ``notes``: what the user should be told (no
    engine cache, the TensorRT EP left out)."""

    def __init__(
        self,
        path: Path,
        precision: str = "fp32",
        device: str = "cpu",
        artifacts: Artifacts | None = None,
        max_batch: int = 1,
    ):
        import onnxruntime as ort

        self.session: Any = None
        self.max_batch = max_batch
        available = ort.get_available_providers()
        trt_problem = None
        if artifacts is not None and TRT_EP in available and parse_device(device)[0] != "cpu":
            lib = onnxruntime_tensorrt_ep_library()
            trt_problem = tensorrt_ep_problem(linked_tensorrt_major(lib) if lib else None, installed_tensorrt())
        wanted, cache_note = _prepare_caches(
            provider_config(
                artifacts, precision, device, available, ort_version=ort.__version__, tensorrt_ep=trt_problem
            )
        )
        self.requested = wanted
        _load_gpu_libraries(ort, [n for n, _ in wanted])
        try:
            opts = ort.SessionOptions()
            # ONNX Runtime's pool threads spin for a while after each run; on a few cores that takes
            # the CPU from the threads around inference (decode, scoring, publishing). Without it the
            # station's p99 overhead fell from 13-33 to 7-17 ms on 2 cores (docs/benchmarks.md).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(str(path), opts, providers=wanted)
        except Exception as err:  # noqa: BLE001 - ONNX Runtime's errors derive from Exception only
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ClipadError(
                f"onnxruntime could not open {Path(path).name} with {', '.join(n for n, _ in wanted)}: {first}"
            ) from None
        # get_available_providers() lists GPU providers that then fail to load; trust the session.
        self.providers: list[str] = self.session.get_providers()
        if parse_device(device)[0] == "cuda" and self.providers[0] == CPU_EP:
            self.close()
            raise ClipadError(
                f"--device cuda: onnxruntime could not load {' or '.join(n for n, _ in wanted if n != CPU_EP)} "
                "(the session fell back to CPUExecutionProvider; check the CUDA, cuDNN and TensorRT libraries), "
                "or use --device cpu"
            )
        self.input_name = self.session.get_inputs()[0].name
        notes = [cache_note] if cache_note and self.providers[0] == TRT_EP else []
        if trt_problem and self.providers[0] == CUDA_EP:
            notes.append(f"{trt_problem}: serving on the CUDA provider")
        self.notes = tuple(notes)

    @property
    def on_gpu(self) -> bool:
        """Whether the session's first (preferred) provider is a GPU one."""
        return self.providers[0] != CPU_EP

    def infer(self, images: np.ndarray) -> Outputs:
        if self.session is None:
            raise ClipadError("the onnxruntime session was closed")
        amap, prob = self.session.run(None, {self.input_name: images})
        return amap, prob

    def close(self) -> None:
        self.session = None
