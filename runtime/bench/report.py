"""`clipad bench`'s outputs from its result dict: the markdown table, the JSON and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from clipad.core.atomic import atomic_path, write_text_atomic


def _g(x: float | None, spec: str | None = None) -> str:
    """A table cell: '-' for None; by default 3-4 significant digits without exponents."""
    if x is None:
        return "-"
    if spec is None:
        spec = ".0f" if abs(x) >= 100 else ".1f" if abs(x) >= 10 else ".2f" if abs(x) >= 1 else ".3g"
    return format(x, spec)


def format_markdown(res: dict) -> str:
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
    for r in res["rows"]:
        if r["status"] != "ok":
            name = r["backend"] + (" (explicit attention)" if r.get("attention") == "explicit" else "")
            cells = (
                [name, r["precision"], _g(r["batch"], "d")]
                + ["-"] * (len(head) - 4)
                + [f"{r['status']}: {r['reason']}"]
            )
        else:
            lat, par = r["latency_ms"], r["parity"]
            ok = "-" if par is None else {True: "pass", False: "FAIL", None: "no limit"}[par["within_tolerance"]]
            frac = None if r["fraction_of_ceiling"] is None else 100 * r["fraction_of_ceiling"]
            cells = [
                r["describe"],
                r["precision"],
                str(r["batch"]),
                _g(lat["p50"]),
                _g(lat["p90"]),
                _g(lat["p99"]),
                f"{_g(lat['min'])}-{_g(lat['max'])}",
                _g(r["images_per_s"]),
                _g(r["gflops_per_s"]),
                f"{_g(frac, '.1f')}% {r['ceiling']}",
                _g(r["start_up_s"], ".3g"),
                _g(r["peak_host_mb"], ".0f"),
                _g(r["gpu_mb"], ".0f"),
                _g(par and par["rel_l2"], ".1e"),
                _g(par and par["prob_max_abs"], ".1e"),
                _g(par and par["top1pct_agreement"], ".3f"),
                ok,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    f = res["flops"]
    parts = ", ".join(f"{k} {v / 1e9:.3g}" for k, v in f["per_image"].items() if k != "total")
    lines += [
        "",
        f"FLOPs per image ({res['model']}, {res['mode']}): {f['per_image']['total'] / 1e9:.4g} GFLOP ({parts}); "
        f"plain open_clip encoding {f['plain_encoding_per_image'] / 1e9:.4g} GFLOP",
    ]
    lines.append(
        "Matmul ceiling: "
        + ", ".join(f"{k} {v['gflops_per_s']:.4g} GFLOP/s (n={v['n']})" for k, v in res["matmul_ceiling"].items())
    )
    for d in res["dual_path"]:
        lines.append(
            f"Dual path vs plain encoding ({d['precision']}, {d['device']}, batch {d['batch']}): "
            f"{d['dual_path_ms']['p50']:.4g} ms / {d['plain_encoding_ms']['p50']:.4g} ms = {d['ratio']:.2f}x"
        )
    for r in res.get("ratios", []):
        lines.append(f"Ratio: {r['ratio']}, batch {r['batch']} = {r['value']:.2f}")
    for g in res["goals"]:
        value = "-" if g["value"] is None else f"{g['value']:.2f}"
        detail = f" ({g['detail']})" if g.get("detail") else ""
        lines.append(f"Goal: {g['goal']} = {value} (limit {g['limit']}): {'met' if g['met'] else 'NOT met'}{detail}")
    lines.append(
        f"{res['settings']['warmup']} warm-up + {res['settings']['iterations']} timed calls per row; "
        f"{res['machine']['cpu']}, {res['machine']['cpu_count']} CPUs, torch {res['machine']['torch']}, "
        f"onnxruntime {res['machine']['onnxruntime']}, GPU {res['machine']['gpu']}"
    )
    m = res["machine"]
    if "cpu_matrix_features" in m:
        lines.append(
            f"CPU matrix features: {', '.join(m['cpu_matrix_features']) or 'none'}; "
            f"torch threads {m['torch_threads']}; "
            f"load average {', '.join(f'{x:.2f}' for x in m.get('load_average', []))}; OpenVINO {m.get('openvino')} "
            f"(CPU capabilities {', '.join(m.get('openvino_cpu_capabilities') or []) or '-'})"
        )
    return "\n".join(lines)


def write_json(res: dict, path: str | Path) -> None:
    """The result dict, indented, written atomically."""
    write_text_atomic(path, json.dumps(res, indent=2) + "\n")


def write_plot(res: dict, path: str | Path) -> None:
    """Latency (p50, bars from min to p99) and throughput against batch size, one line per
    backend/precision; PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display on build machines and servers
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
    fig.suptitle(
        f"clipad bench: {res['model']} ({res['mode']}), {res['machine']['gpu'] or res['machine']['cpu']}", fontsize=10
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
