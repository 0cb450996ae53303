"""`clipad bench`: latency, throughput, memory, start-up and parity of every backend and precision
the artifacts can serve here, beside the FLOP floor and the dual path's cost.

Timing rules (every figure is taken the same way, by ``time_calls``):
- ``warmup`` untimed calls first, then ``iterations`` timed calls, each bracketed by
  ``time.perf_counter``; the samples kept are the timed calls only;
- device work is synchronised before each clock read: backends return numpy arrays, so their
  outputs are already on the host when the call returns; for torch on CUDA
  ``torch.cuda.synchronize()`` is called as well, and for bare torch work (the dual-path
  comparison, the matmul ceiling) it is what makes the clock honest;
- the median (p50) is quoted, p90/p99 and min/max show the spread; throughput is batch / p50.

Inputs are deterministic synthetic frames at model resolution (``parity_images``); parity uses
the same comparison as `clipad parity` (``compare`` against the FP32 PyTorch reference on the
CPU, limits from ``TOLERANCES``).
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from clipad.core.atomic import atomic_path, write_text_atomic
from clipad.core.errors import ClipadError
from clipad.core.progress import Tasks
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.parity import TOLERANCES, compare, parity_images, violations
from clipad.model.flops import ViTDims, flops_breakdown, plain_encoding_flops
from clipad.model.preprocess import normalize
from clipad.runtime.backends import BACKENDS, Backend, open_backend

SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
PARITY_IMAGES = 3  # as `clipad parity`: 2 synthetic parts with defects and 1 noise image

DEFINITIONS = {
    "latency_ms": "wall time of one backend call on a batch (uint8 frames in, map and probability on the host out), "
                  "over the timed iterations only; warm-up calls excluded",
    "images_per_s": "batch / p50 latency",
    "gflops_per_s": "analytic FLOPs of one image (flops.per_image.total) x images_per_s / 1e9",
    "fraction_of_ceiling": "gflops_per_s over the matmul ceiling named in 'ceiling', measured in the same run",
    "start_up_s": "time to open the backend: hash check of the model file plus session creation, engine "
                  "deserialisation or (torch) rebuilding the reference from the manifest",
    "peak_host_mb": "resident-set high-water mark of the whole bench process during the row (Linux VmHWM, reset "
                    "before the row through /proc/self/clear_refs; the first batch of a backend includes opening "
                    "it); it counts everything resident, Python and libraries included. Where VmHWM cannot be "
                    "reset, ru_maxrss: the process's peak since it started (see host_memory_method)",
    "gpu_mb": "torch.cuda.max_memory_allocated during the row (weights included) for torch on CUDA; null "
              "elsewhere (other backends allocate outside torch's allocator)",
    "parity": "the figures of `clipad parity` against the FP32 PyTorch reference on the CPU, on 3 deterministic "
              "images; within_tolerance uses TOLERANCES[precision], null where no limit is defined",
    "dual_path": "DualPathViT forward (both paths, taps projected) over the plain open_clip image encoding "
                 "visual(x) on the same normalised input, same warm-up and iterations",
}


@dataclass
class BenchConfig:
    """What to measure: every backend x precision x batch combination, and how."""

    backends: list[str]
    precisions: list[str]
    batches: list[int]
    iterations: int = 20
    warmup: int = 3
    device: str = "auto"
    parity: bool = True


def validate(cfg: BenchConfig) -> None:
    """One-line errors for unusable settings, before any model work."""
    for name in cfg.backends:
        if name not in BACKENDS:
            raise ClipadError(f"unknown backend '{name}' (one of {', '.join(BACKENDS)})")
    for p in cfg.precisions:
        if p not in PRECISIONS:
            raise ClipadError(f"unknown precision '{p}' (one of {', '.join(PRECISIONS)})")
    if not cfg.backends or not cfg.precisions or not cfg.batches:
        raise ClipadError("--backends, --precision and --batch each need at least one value")
    if any(b < 1 for b in cfg.batches):
        raise ClipadError(f"--batch sizes must be >= 1, got {','.join(map(str, cfg.batches))}")
    if cfg.iterations < 1 or cfg.warmup < 0:
        raise ClipadError("--iterations must be >= 1 and --warmup >= 0")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ClipadError(f"--device must be auto, cpu or cuda, got '{cfg.device}'")


# ---------------------------------------------------------------------------------------------
# timing and memory


def time_calls(fn: Callable[[], Any], warmup: int, iterations: int, sync: Callable[[], None] | None = None) -> list[float]:
    """Milliseconds of each of ``iterations`` calls of ``fn`` after ``warmup`` untimed calls.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs after every call, inside the timed span, so
    that queued device work is counted in the call that queued it.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 (numpy's linear interpolation), min, max and mean of the samples, and n."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "min": float(a.min()), "max": float(a.max()),
            "mean": float(a.mean()), "n": int(a.size)}


class HostMemory:
    """The process's resident-set high-water mark, reset per measurement where Linux allows it."""

    def __init__(self) -> None:
        self.resettable = self._reset()
        self.method = "VmHWM reset per row" if self.resettable else "ru_maxrss (process peak since start, not reset)"

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.resettable:
            self._reset()

    def peak_mb(self) -> float:
        if self.resettable:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return kb / (1024.0 * 1024.0 if platform.system() == "Darwin" else 1024.0)


def _cuda_sync() -> None:
    torch.cuda.synchronize()


def backend_device(backend: Backend) -> str:
    """'cuda' or 'cpu': where the backend really runs (ONNX Runtime: its first loaded provider)."""
    if backend.name == "torch":
        return backend.device.type  # type: ignore[attr-defined]
    if backend.name == "onnxruntime":
        return "cpu" if backend.providers[0] == "CPUExecutionProvider" else "cuda"  # type: ignore[attr-defined]
    return "cuda"


def backend_sync(backend: Backend) -> Callable[[], None] | None:
    """A torch backend on CUDA is synchronised explicitly; the others return host arrays, which
    already means their device work has finished when the call returns."""
    return _cuda_sync if backend.name == "torch" and backend_device(backend) == "cuda" else None


def time_backend(backend: Backend, images: np.ndarray, warmup: int, iterations: int) -> list[float]:
    """Milliseconds per call of ``backend(images)`` (uint8 [B, H, W, 3]), warm-up excluded."""
    return time_calls(lambda: backend(images), warmup, iterations, backend_sync(backend))


# ---------------------------------------------------------------------------------------------
# the floor: matmul ceiling and the dual path's cost


def matmul_ceiling(device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Median GFLOP/s of an n x n x n matrix product (n 8192 on CUDA, 2048 on the CPU)."""
    n = 8192 if device == "cuda" else 2048
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    with torch.no_grad():
        ms = time_calls(lambda: a @ b, 2, 5 if device == "cpu" else 10, _cuda_sync if device == "cuda" else None)
    return {"gflops_per_s": 2 * n**3 / (float(np.median(ms)) / 1000.0) / 1e9, "n": n, "samples_ms": ms}


def ceilings(device: torch.device) -> dict[str, dict]:
    """The CPU FP32 ceiling always; FP32 and FP16 on CUDA when the bench uses it."""
    out = {"cpu_fp32": matmul_ceiling("cpu", torch.float32)}
    if device.type == "cuda":
        out["cuda_fp32"] = matmul_ceiling("cuda", torch.float32)
        out["cuda_fp32"]["tf32_allowed"] = bool(torch.backends.cuda.matmul.allow_tf32)
        out["cuda_fp16"] = matmul_ceiling("cuda", torch.float16)
    return out


def ceiling_key(device: str, precision: str) -> str:
    """Which ceiling a row is compared with: FP16/INT8 on CUDA against FP16, everything else FP32."""
    if device == "cuda":
        return "cuda_fp16" if precision in ("fp16", "int8") else "cuda_fp32"
    return "cpu_fp32"


def dual_path_cost(reference: Any, images: np.ndarray, device: torch.device, warmup: int, iterations: int) -> list[dict]:
    """The dual path (DualPathViT) against a plain open_clip encoding on the same input.

    reference: SDPModel; images: uint8 [B, H, W, 3]. FP32, and FP16 autocast on CUDA. One dict
    per precision with both timings and ``ratio`` = dual p50 / plain p50.
    """
    vit = reference.vit
    x = normalize(torch.from_numpy(images).to(device), reference.mean, reference.std)
    sync = _cuda_sync if device.type == "cuda" else None
    rows = []
    for precision in ("fp32", "fp16") if device.type == "cuda" else ("fp32",):
        autocast = torch.autocast("cuda", dtype=torch.float16, enabled=precision == "fp16")

        def dual() -> Any:
            with autocast:
                return vit(x)

        def plain() -> Any:
            with autocast:
                return vit.visual(x)

        with torch.no_grad():
            d = percentiles(time_calls(dual, warmup, iterations, sync))
            p = percentiles(time_calls(plain, warmup, iterations, sync))
        rows.append({"precision": precision, "device": device.type, "batch": len(images), "dual_path_ms": d,
                     "plain_encoding_ms": p, "ratio": d["p50"] / p["p50"]})
    return rows


# ---------------------------------------------------------------------------------------------
# the run


def machine_info() -> dict[str, Any]:
    """CPU model, cores, threads, library versions and the GPU, for the JSON."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cuda": torch.version.cuda,
                            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    return info


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(err, ClipadError) else f"{type(err).__name__}: {msg}"


def _unavailable(name: str, precision: str, reason: str, status: str = "unavailable", batch: int | None = None) -> dict:
    return {"backend": name, "precision": precision, "batch": batch, "status": status, "reason": reason}


def _parity(backend: Backend, images: np.ndarray, ref: tuple[np.ndarray, np.ndarray]) -> dict:
    figures = compare(ref[0], ref[1], *backend(images))
    within = None if backend.precision not in TOLERANCES else not violations(figures, backend.precision)
    return {**figures, "within_tolerance": within, "against": "torch fp32 (cpu)", "n_images": len(images)}


def _close(backend: Backend | None) -> None:
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def _measure_rows(backend: Backend, opened: dict, frames: np.ndarray, cfg: BenchConfig, memory: HostMemory,
                  flops_per_image: int, ceils: dict[str, dict], advance: Callable[[int], None]) -> list[dict]:
    """One row per batch size for an opened backend (``opened``: start-up figures)."""
    device = backend_device(backend)
    rows = []
    for i, batch in enumerate(cfg.batches):
        if i > 0:
            memory.reset()  # the first batch's peak includes opening the backend
        torch_cuda = backend.name == "torch" and device == "cuda"
        if torch_cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            samples = time_backend(backend, frames[:batch], cfg.warmup, cfg.iterations)
        except Exception as err:  # noqa: BLE001 - e.g. out of device memory: this row failed, the others go on
            rows.append(_unavailable(backend.name, backend.precision, _reason(err), "failed", batch))
            advance(1)
            continue
        stats = percentiles(samples)
        ips = batch / (stats["p50"] / 1000.0)
        gflops = flops_per_image * ips / 1e9
        key = ceiling_key(device, backend.precision)
        rows.append({
            "backend": backend.name, "precision": backend.precision, "batch": batch, "status": "ok", "reason": None,
            "describe": backend.describe(), "device": device, "calls_per_batch": -(-batch // backend.max_batch),
            "latency_ms": stats, "samples_ms": samples, "images_per_s": ips, "gflops_per_s": gflops,
            "ceiling": key, "fraction_of_ceiling": gflops / ceils[key]["gflops_per_s"] if key in ceils else None,
            "start_up_s": opened["start_up_s"], "peak_host_mb": memory.peak_mb(),
            "gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch_cuda else None, "parity": None,
        })
        advance(1)
    return rows


def _bench_combination(art: Artifacts, name: str, precision: str, frames: np.ndarray, cfg: BenchConfig,
                       memory: HostMemory, flops_per_image: int, ceils: dict[str, dict],
                       parity_in: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None,
                       advance: Callable[[int], None]) -> list[dict]:
    """Open one backend/precision (or say why not), time every batch size, then check parity."""
    gc.collect()
    memory.reset()
    backend = None
    t0 = time.perf_counter()
    try:
        backend = open_backend(art, name, precision, cfg.device)
        start_up = time.perf_counter() - t0
        if backend.precision != precision:
            raise ClipadError(f"{name} serves {backend.precision} from these artifacts, not {precision}")
    except Exception as err:  # noqa: BLE001 - ONNX Runtime's own errors derive from Exception only
        _close(backend)
        advance(len(cfg.batches))
        return [_unavailable(name, precision, _reason(err))]
    try:
        rows = _measure_rows(backend, {"start_up_s": start_up}, frames, cfg, memory, flops_per_image, ceils, advance)
        if parity_in is not None and any(r["status"] == "ok" for r in rows):
            figures = _parity(backend, *parity_in)
            for r in rows:
                if r["status"] == "ok":
                    r["parity"] = figures
        return rows
    finally:
        _close(backend)


def performance_goals(rows: list[dict], dual: list[dict]) -> list[dict]:
    """The issue's goals, evaluated on this run where both sides were measured (batch 1)."""

    def p50(backend: str, precision: str) -> float | None:
        for r in rows:
            if (r["backend"], r["precision"], r["batch"], r["status"]) == (backend, precision, 1, "ok"):
                return r["latency_ms"]["p50"]
        return None

    goals = []
    torch32, ort32, ort8 = p50("torch", "fp32"), p50("onnxruntime", "fp32"), p50("onnxruntime", "int8")
    if torch32 and ort32:
        goals.append({"goal": "onnxruntime fp32 / torch fp32, batch 1", "value": ort32 / torch32, "limit": 0.75,
                      "met": ort32 / torch32 <= 0.75})
    if ort32 and ort8:
        goals.append({"goal": "onnxruntime int8 / onnxruntime fp32, batch 1", "value": ort8 / ort32, "limit": 1.0,
                      "met": ort8 / ort32 < 1.0})
    for d in dual:
        goals.append({"goal": f"dual path / plain encoding, {d['precision']} {d['device']}, batch {d['batch']}",
                      "value": d["ratio"], "limit": 1.25, "met": d["ratio"] <= 1.25})
    return goals


def run_bench(art: Artifacts, cfg: BenchConfig, tasks: Tasks) -> dict[str, Any]:
    """Every combination of ``cfg`` on ``art``: the result dict that ``--json`` writes.

    Order: the FP32 reference on the CPU (parity targets, model dimensions, dual-path cost), the
    matmul ceilings, then each backend/precision opened alone (the reference released first so
    that it does not count in their memory) and timed at every batch size.
    """
    from clipad.deploy.export import reference_model
    from clipad.model.loading import resolve_device

    validate(cfg)
    device = resolve_device(cfg.device)
    size = art.image_size
    frames = parity_images(size, max(2, *cfg.batches))
    memory = HostMemory()

    reference = reference_model(art, "cpu")
    dims = ViTDims.from_visual(reference.vit.visual, size)
    per_image = flops_breakdown(dims, reference.mode)
    parity_in = None
    if cfg.parity:
        x = parity_images(size, PARITY_IMAGES)
        with torch.no_grad():
            ref_map, ref_prob = (t.numpy() for t in reference(torch.from_numpy(x)))
        parity_in = (x, (ref_map, ref_prob))
    advance = tasks.add("dual path vs plain encoding", 1)
    dual = dual_path_cost(reference.to(device), frames[: min(cfg.batches)], device, cfg.warmup, cfg.iterations)
    advance(1)
    del reference
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ceils = ceilings(device)

    rows: list[dict] = []
    advance = tasks.add("backends x precisions x batches", len(cfg.backends) * len(cfg.precisions) * len(cfg.batches))
    for name in cfg.backends:
        for precision in cfg.precisions:
            rows += _bench_combination(art, name, precision, frames, cfg, memory, per_image["total"], ceils, parity_in, advance)
    if not any(r["status"] == "ok" for r in rows):
        reasons = "; ".join(f"{r['backend']} {r['precision']}: {r['reason']}" for r in rows)
        raise ClipadError(f"no backend/precision could run here: {reasons}")
    m = art.manifest
    return {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "artifacts": str(art.root), "model": m["model"], "mode": m["mode"], "image_size": size,
        "max_batch": art.max_batch, "weights": m["weights"].get("source"),
        "machine": machine_info(),
        "settings": {"backends": cfg.backends, "precisions": cfg.precisions, "batches": cfg.batches,
                     "iterations": cfg.iterations, "warmup": cfg.warmup, "device": cfg.device, "parity": cfg.parity},
        "host_memory_method": memory.method,
        "definitions": DEFINITIONS,
        "flops": {"per_image": per_image, "plain_encoding_per_image": plain_encoding_flops(dims),
                  "dims": dims.__dict__, "convention": "multiply-add = 2 FLOPs; matrix products and the patch conv only"},
        "matmul_ceiling": ceils,
        "dual_path": dual,
        "goals": performance_goals(rows, dual),
        "rows": rows,
    }


# ---------------------------------------------------------------------------------------------
# output


def _g(x: float | None, spec: str | None = None) -> str:
    """A table cell: '-' for None; by default 3-4 significant digits without exponents."""
    if x is None:
        return "-"
    if spec is None:
        spec = ".0f" if abs(x) >= 100 else ".1f" if abs(x) >= 10 else ".2f" if abs(x) >= 1 else ".3g"
    return format(x, spec)


def format_markdown(res: dict) -> str:
    """The rows as a markdown table, then FLOPs, ceilings, the dual path and the goals."""
    head = ["backend", "precision", "batch", "p50 ms", "p90 ms", "p99 ms", "min-max ms", "images/s", "GFLOP/s",
            "of ceiling", "start-up s", "peak host MB", "GPU MB", "rel L2", "prob err", "top-1%", "parity / status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["rows"]:
        if r["status"] != "ok":
            cells = [r["backend"], r["precision"], _g(r["batch"], "d")] + ["-"] * (len(head) - 4) + [f"{r['status']}: {r['reason']}"]
        else:
            lat, par = r["latency_ms"], r["parity"]
            ok = "-" if par is None else {True: "pass", False: "FAIL", None: "no limit"}[par["within_tolerance"]]
            frac = None if r["fraction_of_ceiling"] is None else 100 * r["fraction_of_ceiling"]
            cells = [r["describe"], r["precision"], str(r["batch"]), _g(lat["p50"]), _g(lat["p90"]), _g(lat["p99"]),
                     f"{_g(lat['min'])}-{_g(lat['max'])}", _g(r["images_per_s"]), _g(r["gflops_per_s"]),
                     f"{_g(frac, '.1f')}% {r['ceiling']}", _g(r["start_up_s"], ".3g"), _g(r["peak_host_mb"], ".0f"),
                     _g(r["gpu_mb"], ".0f"), _g(par and par["rel_l2"], ".1e"), _g(par and par["prob_max_abs"], ".1e"),
                     _g(par and par["top1pct_agreement"], ".3f"), ok]
        lines.append("| " + " | ".join(cells) + " |")
    f = res["flops"]
    parts = ", ".join(f"{k} {v / 1e9:.3g}" for k, v in f["per_image"].items() if k != "total")
    lines += ["", f"FLOPs per image ({res['model']}, {res['mode']}): {f['per_image']['total'] / 1e9:.4g} GFLOP ({parts}); "
              f"plain open_clip encoding {f['plain_encoding_per_image'] / 1e9:.4g} GFLOP"]
    lines.append("Matmul ceiling: " + ", ".join(f"{k} {v['gflops_per_s']:.4g} GFLOP/s (n={v['n']})"
                                                for k, v in res["matmul_ceiling"].items()))
    for d in res["dual_path"]:
        lines.append(f"Dual path vs plain encoding ({d['precision']}, {d['device']}, batch {d['batch']}): "
                     f"{d['dual_path_ms']['p50']:.4g} ms / {d['plain_encoding_ms']['p50']:.4g} ms = {d['ratio']:.2f}x")
    for g in res["goals"]:
        lines.append(f"Goal: {g['goal']} = {g['value']:.2f} (limit {g['limit']}): {'met' if g['met'] else 'NOT met'}")
    lines.append(f"{res['settings']['warmup']} warm-up + {res['settings']['iterations']} timed calls per row; "
                 f"{res['machine']['cpu']}, {res['machine']['cpu_count']} CPUs, torch {res['machine']['torch']}, "
                 f"onnxruntime {res['machine']['onnxruntime']}, GPU {res['machine']['gpu']}")
    return "\n".join(lines)


def write_json(res: dict, path: str | Path) -> None:
    import json

    write_text_atomic(path, json.dumps(res, indent=2) + "\n")


def write_plot(res: dict, path: str | Path) -> None:
    """Latency (p50, bars from min to p99) and throughput against batch size, one line per
    backend/precision; PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = {}
    for r in res["rows"]:
        if r["status"] == "ok":
            series.setdefault(r["describe"], []).append(r)
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rs in series.items():
        rs = sorted(rs, key=lambda r: r["batch"])
        b = [r["batch"] for r in rs]
        p50 = np.array([r["latency_ms"]["p50"] for r in rs])
        spread = [p50 - [r["latency_ms"]["min"] for r in rs], np.array([r["latency_ms"]["p99"] for r in rs]) - p50]
        ax_lat.errorbar(b, p50, yerr=spread, marker="o", capsize=3, label=label)
        ax_tp.plot(b, [r["images_per_s"] for r in rs], marker="o", label=label)
    for ax, ylabel in ((ax_lat, "latency per call, ms (p50; bars min-p99)"), (ax_tp, "throughput, images/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(res["settings"]["batches"], [str(b) for b in res["settings"]["batches"]])
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_tp.legend(fontsize=8)
    fig.suptitle(f"clipad bench: {res['model']} ({res['mode']}), {res['machine']['gpu'] or res['machine']['cpu']}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
