"""`clipad bench`'s run: every backend x precision x batch of a config on one artifact directory.

Inputs are deterministic synthetic frames at model resolution (``parity_images``); the parity
figures are `clipad parity`'s (``clipad.runtime.parity``: the FP32 PyTorch reference on the
CPU, limits from ``TOLERANCES``).
"""

from __future__ import annotations

import gc
import time

import torch

from clipad.core.errors import ClipadError
from clipad.core.progress import Tasks
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.parity import parity_images
from clipad.methods.registry import get_method
from clipad.runtime.bench.config import BenchConfig, validate
from clipad.runtime.bench.floors import ceilings, dual_path_cost, flop_figures
from clipad.runtime.bench.goals import performance_goals, ratios, reduced_gates
from clipad.runtime.bench.machine import machine_info
from clipad.runtime.bench.records import BenchRow
from clipad.runtime.bench.report import BenchReport
from clipad.runtime.bench.rows import RowContext, bench_combination
from clipad.runtime.bench.schema import DEFINITIONS, SCHEMA_VERSION
from clipad.runtime.bench.timing import HostMemory
from clipad.runtime.parity import reference_outputs

PARITY_IMAGES = 3  # as `clipad parity`: 2 synthetic parts with defects and 1 noise image


def run_bench(art: Artifacts, cfg: BenchConfig, tasks: Tasks) -> BenchReport:
    """Every combination of ``cfg`` on ``art``: the report that ``--json`` writes.

    Order: the FP32 reference on the CPU (parity targets, the method's FLOPs, the dual-path cost
    where the method has one: the CLIP methods), the matmul ceilings, then each backend/precision
    opened alone (the reference released first so that it does not count in their memory) and
    timed at every batch size.
    """
    from clipad.deploy.rebuild import reference_model
    from clipad.model.loading import resolve_device

    validate(cfg)
    cfg.fit(art.max_batch)
    device = resolve_device(cfg.device)
    size = art.geometry
    frames = parity_images(size, max(2, *cfg.batches))
    memory = HostMemory()

    reference = reference_model(art, "cpu")
    flops = flop_figures(reference, size.height, get_method(art.manifest.mode))
    # the parity targets first: the dual-path timing below moves the reference to the bench device
    target = reference_outputs(art, parity_images(size, PARITY_IMAGES), reference) if cfg.parity else None
    dual: list[dict] = []
    if flops["plain_encoding_per_image"] is not None:  # the CLIP methods' dual path against a plain encoding
        advance = tasks.add("dual path vs plain encoding", 1)
        dual = dual_path_cost(reference.to(device), frames[: min(cfg.batches)], device, cfg.warmup, cfg.iterations)
        advance(1)
    del reference
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ceils = ceilings(device)

    combos = [
        (name, precision, attention)
        for name in cfg.backends
        for precision in cfg.precisions
        for attention in (cfg.attentions if name == "torch" else [None])
    ]
    advance = tasks.add("backends x precisions x batches", len(combos) * len(cfg.batches))
    ctx = RowContext(cfg, frames, memory, flops["per_image"]["total"], ceils, target, advance)
    rows: list[BenchRow] = []
    for name, precision, attention in combos:
        if attention not in (None, cfg.attentions[0]) and any(
            (r.backend, r.precision, r.status) == (name, precision, "unavailable") for r in rows
        ):
            ctx.advance(len(cfg.batches))  # the torch precision cannot run in any attention form: said once
            continue
        rows += bench_combination(art, name, precision, ctx, attention)
    if not any(r.ok for r in rows):
        reasons = "; ".join(f"{r.backend} {r.precision}: {r.reason}" for r in rows)
        raise ClipadError(f"no backend/precision could run here: {reasons}")
    m = art.manifest
    machine = machine_info()
    return BenchReport(
        schema_version=SCHEMA_VERSION,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        artifacts=str(art.root),
        model=m.model,
        mode=m.mode,
        image_size=m.image_size,
        max_batch=art.max_batch,
        weights=m.weights.source,
        machine=machine,
        settings={
            "backends": cfg.backends,
            "precisions": cfg.precisions,
            "batches": cfg.batches,
            "iterations": cfg.iterations,
            "warmup": cfg.warmup,
            "device": cfg.device,
            "parity": cfg.parity,
            "attentions": cfg.attentions,
        },
        host_memory_method=memory.method,
        definitions=DEFINITIONS,
        flops=flops,
        matmul_ceiling=ceils,
        dual_path=dual,
        goals=performance_goals(rows, dual, reduced_gates(m), machine),
        ratios=ratios(rows),
        rows=rows,
    )
