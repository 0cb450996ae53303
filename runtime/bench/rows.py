"""The rows of `clipad bench`: one backend/precision opened alone, timed at every batch size,
then compared with the reference; or one row saying why it cannot run here.

A row is a ``records.BenchRow``: backend, precision, batch, status ("ok", "unavailable" or
"failed"), reason, attention (the torch rows' attention form, else None), and for "ok" rows the
figures that ``schema.DEFINITIONS`` defines.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from clipad.core.choices import Attention, BackendName, ServedPrecision
from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import ParityFigures
from clipad.runtime.backends import Backend, TorchOptions, open_backend
from clipad.runtime.bench.config import BenchConfig
from clipad.runtime.bench.floors import ceiling_key
from clipad.runtime.bench.records import BenchRow
from clipad.runtime.bench.timing import HostMemory, percentiles, time_backend
from clipad.runtime.parity import Reference, check_backend


@dataclass
class RowContext:
    """What every row of one run shares. frames: uint8 [N, H, W, 3], N >= the largest batch;
    flops_per_image: analytic FLOPs of one forward; ceilings: ``floors.ceilings``; reference:
    the parity target, None without parity; advance: the progress bar, one step per batch size."""

    cfg: BenchConfig
    frames: np.ndarray
    memory: HostMemory
    flops_per_image: int
    ceilings: dict[str, dict]
    reference: Reference | None
    advance: Callable[[int], None]


def _reason(err: BaseException) -> str:
    """The error's first line; prefixed with its type unless it is one of ours (already worded)."""
    text = str(err).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(err, ClipadError) else f"{type(err).__name__}: {msg}"


def unavailable(
    name: str,
    precision: str,
    reason: str,
    status: str = "unavailable",
    batch: int | None = None,
    attention: str | None = None,
) -> BenchRow:
    """A row that did not run: the whole combination (batch None) or one batch size ("failed")."""
    return BenchRow(name, precision, batch, status, reason, attention)


def parity_json(figures: ParityFigures) -> dict:
    """A row's ``parity``: the figures, within_tolerance, the reference and the number of images."""
    return {
        **figures.values(),
        "within_tolerance": figures.within,
        "against": figures.against,
        "n_images": figures.n_images,
    }


def measure_batches(
    backend: Backend, start_up_s: float, ctx: RowContext, attention: str | None = None
) -> list[BenchRow]:
    """One row per batch size for an opened backend; ``start_up_s``: seconds it took to open;
    ``attention``: the torch backend's attention form, recorded in its rows."""
    info = backend.info()
    rows = []
    for i, batch in enumerate(ctx.cfg.batches):
        if i > 0:
            ctx.memory.reset()  # the first batch's peak includes opening the backend
        torch_cuda = info.name == "torch" and info.device == "cuda"
        if torch_cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            samples = time_backend(backend, ctx.frames[:batch], ctx.cfg.warmup, ctx.cfg.iterations)
        except Exception as err:  # noqa: BLE001 - e.g. out of device memory: this row failed, the others go on
            rows.append(unavailable(info.name, info.precision, _reason(err), "failed", batch, attention))
            ctx.advance(1)
            continue
        stats = percentiles(samples)
        ips = batch / (stats["p50"] / 1000.0)
        gflops = ctx.flops_per_image * ips / 1e9
        key = ceiling_key(info.device, info.precision)
        rows.append(
            BenchRow(
                backend=info.name,
                precision=info.precision,
                batch=batch,
                status="ok",
                attention=attention,
                describe=info.describe(),
                device=info.device,
                calls_per_batch=-(-batch // info.max_batch),
                latency_ms=stats,
                samples_ms=samples,
                images_per_s=ips,
                gflops_per_s=gflops,
                ceiling=key,
                fraction_of_ceiling=gflops / ctx.ceilings[key]["gflops_per_s"] if key in ctx.ceilings else None,
                start_up_s=start_up_s,
                peak_host_mb=ctx.memory.peak_mb(),
                gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if torch_cuda else None,
            )
        )
        ctx.advance(1)
    return rows


def bench_combination(
    art: Artifacts, name: BackendName, precision: ServedPrecision, ctx: RowContext, attention: Attention | None = None
) -> list[BenchRow]:
    """Open one backend/precision (or say why not), time every batch size, then check parity;
    ``attention``: the torch backend's attention form (None for the other backends)."""
    gc.collect()
    ctx.memory.reset()
    t0 = time.perf_counter()
    try:
        options = ctx.cfg.triton if name == "triton" else TorchOptions(attention or "fused")
        backend = open_backend(art, name, precision, ctx.cfg.device, options)
    except Exception as err:  # noqa: BLE001 - ONNX Runtime's own errors derive from Exception only
        ctx.advance(len(ctx.cfg.batches))
        return [unavailable(name, precision, _reason(err), attention=attention)]
    start_up_s = time.perf_counter() - t0
    with backend:
        served = backend.info().precision
        if served != precision:  # a TensorRT plan has the precision it was built with
            ctx.advance(len(ctx.cfg.batches))
            return [
                unavailable(
                    name,
                    precision,
                    f"{name} serves {served} from these artifacts, not {precision}",
                    attention=attention,
                )
            ]
        rows = measure_batches(backend, start_up_s, ctx, attention)
        if ctx.reference is not None and any(r.ok for r in rows):
            parity = parity_json(check_backend(backend, ctx.reference).figures)
            for r in rows:
                if r.ok:
                    r.parity = parity
        return rows
