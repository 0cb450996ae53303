"""`clipad bench`'s report: ``BenchReport``, the run as ``--json`` holds it (typed rows and goals from
``records``, serialised in one place: ``to_json``/``from_json``, which also reads files written before
``ratios`` existed), its markdown table and its plot."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from clipad.core.atomic import atomic_path, write_text_atomic
from clipad.runtime.bench.records import BenchRow, Goal, Ratio


@dataclass
class BenchReport:
    schema_version: int
    created: str
    artifacts: str
    model: str
    mode: str
    image_size: int | list[int]  # the manifest's: S, or [H, W]
    max_batch: int
    weights: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    host_memory_method: str
    definitions: dict[str, str]
    flops: dict[str, Any]
    matmul_ceiling: dict[str, dict[str, Any]]
    dual_path: list[dict[str, Any]]
    goals: list[Goal]
    ratios: list[Ratio] | None  # None: a file written before ratios existed
    rows: list[BenchRow] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(goals=[g.to_json() for g in self.goals], rows=[r.to_json() for r in self.rows])
        if self.ratios is None:
            del d["ratios"]
        else:
            d["ratios"] = [r.to_json() for r in self.ratios]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BenchReport:
        plain = {f.name: d[f.name] for f in fields(cls) if f.name not in ("goals", "ratios", "rows")}
        ratios = [Ratio.from_json(r) for r in d["ratios"]] if "ratios" in d else None
        goals = [Goal.from_json(g) for g in d["goals"]]
        return cls(**plain, goals=goals, ratios=ratios, rows=[BenchRow.from_json(r) for r in d["rows"]])

    def describe(self) -> str:
        """The rows as a markdown table, then FLOPs, ceilings, the dual path, the ratios and the goals."""
        return format_markdown(self)

    def write(self, json_path: Path | None = None, plot: Path | None = None) -> list[str]:
        """Write the JSON and/or the plot; a line for each file written."""
        lines = []
        if json_path is not None:
            write_text_atomic(json_path, json.dumps(self.to_json(), indent=2) + "\n")
            lines.append(f"JSON written to {json_path}")
        if plot is not None:
            write_plot(self, plot)
            lines.append(f"plot written to {plot}")
        return lines


def _g(x: float | None, spec: str | None = None) -> str:
    """A table cell: '-' for None; by default 3-4 significant digits without exponents."""
    if x is None:
        return "-"
    if spec is None:
        spec = ".0f" if abs(x) >= 100 else ".1f" if abs(x) >= 10 else ".2f" if abs(x) >= 1 else ".3g"
    return format(x, spec)


def format_markdown(res: BenchReport) -> str:
    """The rows as a markdown table, then FLOPs, ceilings, the dual path and the goals."""
    head = [
        "backend",
        "precision",
        "batch",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "min-max ms",
        "images/s",
        "GFLOP/s",
        "of ceiling",
        "start-up s",
        "peak host MB",
        "GPU MB",
        "rel L2",
        "prob err",
        "top-1%",
        "parity / status",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res.rows:
        if not r.ok or r.latency_ms is None:
            name = r.backend + (" (explicit attention)" if r.attention == "explicit" else "")
            cells = [name, r.precision, _g(r.batch, "d")] + ["-"] * (len(head) - 4) + [f"{r.status}: {r.reason}"]
        else:
            lat, par = r.latency_ms, r.parity or {}
            ok = "-" if not par else {True: "pass", False: "FAIL", None: "no limit"}[par["within_tolerance"]]
            frac = None if r.fraction_of_ceiling is None else 100 * r.fraction_of_ceiling
            cells = [
                str(r.describe),
                r.precision,
                str(r.batch),
                _g(lat["p50"]),
                _g(lat["p90"]),
                _g(lat["p99"]),
                f"{_g(lat['min'])}-{_g(lat['max'])}",
                _g(r.images_per_s),
                _g(r.gflops_per_s),
                f"{_g(frac, '.1f')}% {r.ceiling}",
                _g(r.start_up_s, ".3g"),
                _g(r.peak_host_mb, ".0f"),
                _g(r.gpu_mb, ".0f"),
                _g(par.get("rel_l2"), ".1e"),
                _g(par.get("prob_max_abs"), ".1e"),
                _g(par.get("top1pct_agreement"), ".3f"),
                ok,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    f = res.flops
    parts = ", ".join(f"{k} {v / 1e9:.3g}" for k, v in f["per_image"].items() if k != "total")
    lines += [
        "",
        f"FLOPs per image ({res.model}, {res.mode}): {f['per_image']['total'] / 1e9:.4g} GFLOP ({parts})"
        + (
            ""
            if f["plain_encoding_per_image"] is None
            else f"; plain open_clip encoding {f['plain_encoding_per_image'] / 1e9:.4g} GFLOP"
        ),
    ]
    lines.append(
        "Matmul ceiling: "
        + ", ".join(f"{k} {v['gflops_per_s']:.4g} GFLOP/s (n={v['n']})" for k, v in res.matmul_ceiling.items())
    )
    for d in res.dual_path:
        lines.append(
            f"Dual path vs plain encoding ({d['precision']}, {d['device']}, batch {d['batch']}): "
            f"{d['dual_path_ms']['p50']:.4g} ms / {d['plain_encoding_ms']['p50']:.4g} ms = {d['ratio']:.2f}x"
        )
    lines += [f"Ratio: {r.ratio}, batch {r.batch} = {r.value:.2f}" for r in res.ratios or []]
    lines += [g.describe() for g in res.goals]
    m = res.machine
    lines.append(
        f"{res.settings['warmup']} warm-up + {res.settings['iterations']} timed calls per row; "
        f"{m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']}, onnxruntime {m['onnxruntime']}, GPU {m['gpu']}"
    )
    if "cpu_matrix_features" in m:
        lines.append(
            f"CPU matrix features: {', '.join(m['cpu_matrix_features']) or 'none'}; "
            f"torch threads {m['torch_threads']}; "
            f"load average {', '.join(f'{x:.2f}' for x in m.get('load_average', []))}; OpenVINO {m.get('openvino')} "
            f"(CPU capabilities {', '.join(m.get('openvino_cpu_capabilities') or []) or '-'})"
        )
    return "\n".join(lines)


def write_plot(res: BenchReport, path: str | Path) -> None:
    """Latency (p50, bars from min to p99) and throughput against batch size, one line per
    backend/precision; PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display on build machines and servers
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, dict[str, float], float]]] = {}  # batch, latency_ms, images_per_s
    for r in res.rows:
        if r.ok and r.batch is not None and r.latency_ms is not None and r.images_per_s is not None:
            series.setdefault(str(r.describe), []).append((r.batch, r.latency_ms, r.images_per_s))
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, rs in series.items():
        rs = sorted(rs, key=lambda r: r[0])
        b = [batch for batch, _, _ in rs]
        p50 = np.array([lat["p50"] for _, lat, _ in rs])
        spread = [p50 - [lat["min"] for _, lat, _ in rs], np.array([lat["p99"] for _, lat, _ in rs]) - p50]
        ax_lat.errorbar(b, p50, yerr=spread, marker="o", capsize=3, label=label)
        ax_tp.plot(b, [ips for _, _, ips in rs], marker="o", label=label)
    for ax, ylabel in ((ax_lat, "latency per call, ms (p50; bars min-p99)"), (ax_tp, "throughput, images/s")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(res.settings["batches"], [str(b) for b in res.settings["batches"]])
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_tp.legend(fontsize=8)
    fig.suptitle(f"clipad bench: {res.model} ({res.mode}), {res.machine['gpu'] or res.machine['cpu']}", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
