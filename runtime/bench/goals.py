"""The performance goals, evaluated on one bench run where both sides were measured.

Besides the goals with a limit, ``ratios`` are the comparisons a run reports without one
(OpenVINO FP32 against ONNX Runtime FP32), and the reduced-precision goal takes the gates from
the manifest: a reduced precision counts only where its AUROC quality gate passed.
"""

from __future__ import annotations

from typing import Any

from clipad.deploy.manifest import Manifest
from clipad.runtime.bench.records import BenchRow, Goal, Ratio

# The CPU flags that make BF16 fast (AVX-512 BF16 or AMX), and the limit of the best
# reduced-precision row over ONNX Runtime FP32 at batch 1 with and without them.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
REDUCED_LIMIT = {True: 0.4, False: 0.7}
REDUCED_GOAL = "best gated reduced precision / onnxruntime fp32, cpu batch 1"


def _p50(
    rows: list[BenchRow], backend: str, precision: str, batch: int = 1, attention: str | None = None
) -> float | None:
    """p50 latency (ms) of a row, None when it did not run; ``attention`` None: any form (torch: fused first)."""
    hits = [
        r
        for r in rows
        if (r.backend, r.precision, r.batch, r.status) == (backend, precision, batch, "ok")
        and (attention is None or r.attention == attention)
    ]
    hits.sort(key=lambda r: r.attention != "fused")
    return hits[0].p50 if hits else None


def reduced_gates(manifest: Manifest) -> dict[str, bool]:
    """Whether each judged reduced precision passed its AUROC quality gate, by "backend precision"
    (ONNX Runtime's from ``parity.gates``, OpenVINO's from ``openvino.gates``); unjudged ones absent."""
    out = {f"onnxruntime {p}": g.passed for p, g in (manifest.parity.gates or {}).items()}
    if manifest.openvino is not None:
        out |= {f"openvino {p}": g.passed for p, g in (manifest.openvino.gates or {}).items()}
    return out


def _reduced_goal(rows: list[BenchRow], gates: dict[str, bool], machine: dict[str, Any], ort32: float) -> Goal:
    """Best reduced-precision row (batch 1) of the CPU ``rows`` whose gate passed, over ONNX Runtime FP32
    ``ort32`` ms."""
    bf16_cpu = any(f in machine.get("cpu_matrix_features", []) for f in BF16_FLAGS)
    candidates = []
    for key, passed in gates.items():
        backend, precision = key.split()
        ms = _p50(rows, backend, precision)
        if passed and ms is not None:
            candidates.append((ms, key))
    if not candidates:
        judged = ", ".join(f"{k} {'passed' if v else 'FAILED'}" for k, v in gates.items()) or "no gate in the manifest"
        detail = f"no timed reduced precision passed its gate ({judged})"
        return Goal(REDUCED_GOAL, None, REDUCED_LIMIT[bf16_cpu], False, detail)
    ms, key = min(candidates)
    limit = REDUCED_LIMIT[bf16_cpu]
    detail = f"{key}, gate passed; limit for a CPU {'with' if bf16_cpu else 'without'} AVX-512 BF16 or AMX"
    return Goal(REDUCED_GOAL, ms / ort32, limit, ms / ort32 <= limit, detail)


def performance_goals(
    rows: list[BenchRow], dual: list[dict], gates: dict[str, bool] | None = None, machine: dict[str, Any] | None = None
) -> list[Goal]:
    """One ``Goal`` each (goal, value, limit, met, and sometimes detail; value None: not measurable):
    ONNX Runtime FP32 at most 0.75x torch FP32 and INT8 faster than FP32 (batch 1); the best gated
    reduced precision at most 0.4x (BF16 CPUs) or 0.7x ONNX Runtime FP32 (batch 1); torch fused
    attention no slower than explicit (batch 1 and the largest batch); the dual path at most 1.25x
    the plain encoding. ``gates``: ``reduced_gates`` of the manifest; ``machine``: ``machine_info``."""
    goals: list[Goal] = []
    torch32, ort32, ort8 = (
        _p50(rows, "torch", "fp32"),
        _p50(rows, "onnxruntime", "fp32"),
        _p50(rows, "onnxruntime", "int8"),
    )
    if torch32 and ort32:
        goals.append(Goal("onnxruntime fp32 / torch fp32, batch 1", ort32 / torch32, 0.75, ort32 / torch32 <= 0.75))
    if ort32 and ort8:
        goals.append(Goal("onnxruntime int8 / onnxruntime fp32, batch 1", ort8 / ort32, 1.0, ort8 / ort32 < 1.0))
    cpu_rows = [r for r in rows if r.device == "cpu"]
    cpu32 = _p50(cpu_rows, "onnxruntime", "fp32")
    if cpu32 and gates and any(r.backend != "torch" and r.precision != "fp32" for r in cpu_rows):
        goals.append(_reduced_goal(cpu_rows, gates, machine or {}, cpu32))
    for batch in sorted({r.batch for r in rows if r.attention == "explicit" and r.ok and r.batch is not None}):
        fused = _p50(rows, "torch", "fp32", batch, "fused")
        explicit = _p50(rows, "torch", "fp32", batch, "explicit")
        if fused and explicit:
            goal = f"torch fused / explicit attention, fp32 batch {batch}"
            goals.append(Goal(goal, fused / explicit, 1.0, fused / explicit <= 1.0))
    for d in dual:
        goal = f"dual path / plain encoding, {d['precision']} {d['device']}, batch {d['batch']}"
        goals.append(Goal(goal, d["ratio"], 1.25, d["ratio"] <= 1.25))
    return goals


def ratios(rows: list[BenchRow]) -> list[Ratio]:
    """Comparisons reported without a limit: OpenVINO at each precision over ONNX Runtime FP32,
    per batch size."""
    out = []
    for batch in sorted({r.batch for r in rows if r.ok and r.batch is not None}):
        ort32 = _p50(rows, "onnxruntime", "fp32", batch)
        if not ort32:
            continue
        for precision in ("fp32", "bf16", "fp16", "int8"):
            ov = _p50(rows, "openvino", precision, batch)
            if ov:
                out.append(Ratio(f"openvino {precision} / onnxruntime fp32", batch, ov / ort32))
    return out
