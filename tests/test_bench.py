"""`clipad bench` on the tiny model: the timing harness (counts, warm-up exclusion, percentiles),
the JSON schema, the table and the plot, unavailable combinations, the analytic FLOP count
against torch's FlopCounterMode, and bad input. No speed is asserted."""

from __future__ import annotations

import contextlib
import io
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from clipad import cli
from clipad.core.progress import Tasks
from clipad.deploy.export import ExportConfig, export
from clipad.deploy.parity import parity_images
from clipad.methods.registry import get_method
from clipad.model.flops import ViTDims, original_block_flops, plain_encoding_flops
from clipad.model.preprocess import normalize
from clipad.model.prompts import PROMPT_SETS
from clipad.model.sdp import SDPModel
from clipad.runtime.backends import Backend, open_backend
from clipad.runtime.bench import SCHEMA_VERSION, BenchReport, BenchRow, percentiles, time_backend, time_calls
from clipad.runtime.bench.goals import performance_goals, ratios
from clipad.runtime.parity import run_parity
from tests.helpers import assert_one_line_error, random_heads, run

ITERATIONS, WARMUP, BATCHES = 3, 1, (1, 2)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny):
    """An sdp export of the tiny model with its FP32 and FP16 graphs, max batch 4."""
    cfg = ExportConfig(
        category="washer",
        out=tmp_path_factory.mktemp("bench") / "washer",
        prompts=PROMPT_SETS["industrial"],
        max_batch=4,
        precision="all",
    )
    return export(tiny, cfg, Tasks(None))


@pytest.fixture(scope="module")
def bench_run(artifacts, tmp_path_factory):
    """One `clipad bench` over every backend and precision: (exit code, stdout, JSON, PNG path)."""
    out = tmp_path_factory.mktemp("bench-out")
    args = [
        "bench",
        "--artifacts",
        str(artifacts.root),
        "--backends",
        "torch,onnxruntime,tensorrt",
        "--precision",
        "fp32,fp16,int8",
        "--batch",
        ",".join(map(str, BATCHES)),
        "--iterations",
        str(ITERATIONS),
        "--warmup",
        str(WARMUP),
        "--device",
        "cpu",
        "--json",
        str(out / "bench.json"),
        "--plot",
        str(out / "bench.png"),
        "--quiet",
    ]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.run(args)
    assert code == 0, stderr.getvalue()
    return code, stdout.getvalue(), json.loads((out / "bench.json").read_text()), out / "bench.png"


class CountingBackend(Backend):
    """A real backend behind a call counter; its first ``slow_calls`` calls sleep ``delay`` s first."""

    name = "counting"

    def __init__(self, inner: Backend, slow_calls: int, delay: float):
        self.inner, self.slow_calls, self.delay = inner, slow_calls, delay
        self.precision, self.max_batch, self.calls = inner.precision, inner.max_batch, 0

    def _infer(self, images):
        self.calls += 1
        if self.calls <= self.slow_calls:
            time.sleep(self.delay)
        return self.inner._infer(images)


def test_warmup_calls_are_made_but_not_recorded(artifacts):
    inner = open_backend(artifacts, "onnxruntime", "fp32", "cpu")
    backend = CountingBackend(inner, slow_calls=2, delay=1.0)
    images = parity_images(artifacts.geometry, 2)
    samples = time_backend(backend, images, warmup=2, iterations=5)
    assert backend.calls == 7 and len(samples) == 5
    # the two slow (warm-up) calls took over 1000 ms each; none of them is among the samples
    assert max(samples) < 1000.0


def test_time_calls_counts_and_syncs():
    calls, syncs = [], []
    samples = time_calls(lambda: calls.append(1), warmup=4, iterations=6, sync=lambda: syncs.append(1))
    assert len(calls) == 10 and len(samples) == 6 and len(syncs) == 7  # once after warm-up, then per timed call
    assert all(s >= 0 for s in samples)


def test_percentiles_from_samples():
    samples = np.random.default_rng(0).permutation(np.arange(1, 101, dtype=float))  # 1..100, shuffled
    p = percentiles(list(samples))
    # linear interpolation at rank q (n - 1): 1 + q * 99
    assert p == pytest.approx(
        {"p50": 50.5, "p90": 90.1, "p99": 99.01, "min": 1.0, "max": 100.0, "mean": 50.5, "n": 100}
    )


def test_json_schema_and_values(bench_run, artifacts):
    _, _, res, _ = bench_run
    assert res["schema_version"] == SCHEMA_VERSION
    for key in (
        "created",
        "artifacts",
        "model",
        "mode",
        "image_size",
        "machine",
        "settings",
        "host_memory_method",
        "definitions",
        "flops",
        "matmul_ceiling",
        "dual_path",
        "goals",
        "rows",
    ):
        assert key in res, key
    assert {"cpu", "cpu_count", "torch", "onnxruntime", "gpu"} <= set(res["machine"])
    assert res["model"] == "clipad-tiny" and res["settings"]["iterations"] == ITERATIONS
    assert res["matmul_ceiling"]["cpu_fp32"]["gflops_per_s"] > 0
    combos = {(r["backend"], r["precision"]) for r in res["rows"]}
    assert combos == {(b, p) for b in ("torch", "onnxruntime", "tensorrt") for p in ("fp32", "fp16", "int8")}
    ok = [r for r in res["rows"] if r["status"] == "ok"]
    assert {(r["backend"], r["precision"], r["batch"]) for r in ok} >= {
        (b, "fp32", n) for b in ("torch", "onnxruntime") for n in BATCHES
    }
    for r in ok:
        lat = r["latency_ms"]
        assert len(r["samples_ms"]) == lat["n"] == ITERATIONS
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["images_per_s"] == pytest.approx(r["batch"] / lat["p50"] * 1000)
        assert r["gflops_per_s"] == pytest.approx(res["flops"]["per_image"]["total"] * r["images_per_s"] / 1e9)
        assert 0 < r["fraction_of_ceiling"] and r["ceiling"] == "cpu_fp32"
        assert r["start_up_s"] > 0 and r["peak_host_mb"] > 0 and r["gpu_mb"] is None and r["device"] == "cpu"
        assert {"rel_l2", "prob_max_abs", "top1pct_agreement", "max_abs", "within_tolerance"} <= set(r["parity"])
        if r["precision"] == "fp32":
            assert r["parity"]["within_tolerance"] is True
    for r in res["rows"]:
        assert r["status"] == "ok" or (r["reason"] and r["batch"] is None)
    trt = [r for r in res["rows"] if r["backend"] == "tensorrt"]
    assert all(r["status"] == "unavailable" and "model.plan" in r["reason"] for r in trt)
    torch16 = next(r for r in res["rows"] if (r["backend"], r["precision"]) == ("torch", "fp16"))
    assert torch16["status"] == "unavailable" and "CUDA" in torch16["reason"]
    dims = ViTDims(**res["flops"]["dims"])
    assert res["flops"]["per_image"] == get_method("sdp").flops(dims)
    (dual,) = res["dual_path"]
    assert dual["ratio"] == pytest.approx(dual["dual_path_ms"]["p50"] / dual["plain_encoding_ms"]["p50"])
    assert dual["dual_path_ms"]["n"] == dual["plain_encoding_ms"]["n"] == ITERATIONS
    assert any(g["goal"].startswith("onnxruntime fp32 / torch fp32") for g in res["goals"])


def test_parity_figures_are_those_of_clipad_parity(bench_run, artifacts):
    """bench's parity column and `clipad parity` come from one driver: same frames, same CPU
    reference, same figures; `clipad parity --json` keeps its keys."""
    _, _, res, _ = bench_run
    rows = run_parity(artifacts, ["onnxruntime"], parity_images(artifacts.geometry, 3), "cpu")
    assert [list(r.to_json()) for r in rows] == [
        [
            "backend",
            "precision",
            "n_images",
            "max_abs",
            "rel_l2",
            "prob_max_abs",
            "top1pct_agreement",
            "within_tolerance",
        ]
    ] * len(rows)
    for row in rows:
        bench = next(
            r["parity"]
            for r in res["rows"]
            if (r["backend"], r["precision"], r["status"]) == ("onnxruntime", row.precision, "ok")
        )
        assert bench["against"] == row.figures.against == "torch fp32 (cpu)"
        assert bench["n_images"] == row.figures.n_images == 3
        assert bench["within_tolerance"] == row.within_tolerance
        assert {k: bench[k] for k in row.figures.values()} == pytest.approx(row.figures.values())


def test_markdown_table_has_a_line_per_row(bench_run):
    _, out, res, _ = bench_run
    table = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| backend")]
    assert len(table) == len(res["rows"])
    assert sum("unavailable: " in line for line in table) == sum(r["status"] == "unavailable" for r in res["rows"])
    assert "Dual path vs plain encoding" in out and "Matmul ceiling" in out and "FLOPs per image" in out


def test_plot_is_a_png(bench_run):
    png = bench_run[3]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 400


def test_torch_rows_per_attention_form(artifacts, capsys, tmp_path):
    """--attention fused,explicit gives a torch row set per form, both within the FP32 parity
    limits of the reference (same maps), and their ratio as a goal per batch size."""
    code, out, err = run(
        capsys,
        "bench",
        "--artifacts",
        artifacts.root,
        "--backends",
        "torch,onnxruntime",
        "--precision",
        "fp32",
        "--attention",
        "fused,explicit",
        "--batch",
        "1,2",
        "--iterations",
        "2",
        "--warmup",
        "0",
        "--device",
        "cpu",
        "--json",
        tmp_path / "b.json",
        "--quiet",
    )
    assert code == 0, err
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["settings"]["attentions"] == ["fused", "explicit"]
    forms = [(r["backend"], r["attention"], r["batch"]) for r in res["rows"]]
    assert forms == [
        ("torch", "fused", 1),
        ("torch", "fused", 2),
        ("torch", "explicit", 1),
        ("torch", "explicit", 2),
        ("onnxruntime", None, 1),
        ("onnxruntime", None, 2),
    ]
    for r in res["rows"]:
        assert r["status"] == "ok" and r["parity"]["within_tolerance"] is True
    explicit = [r for r in res["rows"] if r["attention"] == "explicit"]
    assert all("explicit attention" in r["describe"] for r in explicit)
    goals = {g["goal"]: g for g in res["goals"]}
    for batch in (1, 2):
        g = goals[f"torch fused / explicit attention, fp32 batch {batch}"]
        p50 = {
            r["attention"]: r["latency_ms"]["p50"]
            for r in res["rows"]
            if r["backend"] == "torch" and r["batch"] == batch
        }
        assert g["value"] == pytest.approx(p50["fused"] / p50["explicit"]) and g["met"] == (g["value"] <= 1.0)
    # the onnxruntime / torch goal compares with the fused torch row (the default form)
    ort = goals["onnxruntime fp32 / torch fp32, batch 1"]
    fused1 = next(r for r in res["rows"] if (r["attention"], r["batch"]) == ("fused", 1))
    ort1 = next(r for r in res["rows"] if (r["backend"], r["batch"]) == ("onnxruntime", 1))
    assert ort["value"] == pytest.approx(ort1["latency_ms"]["p50"] / fused1["latency_ms"]["p50"])
    assert "torch fp32 (cpu, explicit attention)" in out and "Goal: torch fused / explicit attention" in out
    code, _, err = run(
        capsys,
        "bench",
        "--artifacts",
        artifacts.root,
        "--backends",
        "torch",
        "--precision",
        "fp32,fp16",
        "--attention",
        "fused,explicit",
        "--batch",
        "1",
        "--iterations",
        "1",
        "--warmup",
        "0",
        "--device",
        "cpu",
        "--no-parity",
        "--json",
        tmp_path / "c.json",
        "--quiet",
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "c.json").read_text())["rows"]
    assert [(r["precision"], r["attention"], r["status"]) for r in rows] == [
        ("fp32", "fused", "ok"),
        ("fp32", "explicit", "ok"),
        ("fp16", "fused", "unavailable"),
    ]  # fp16 on a CPU: said once


def _row(backend, precision, p50, batch=1, device="cpu"):
    return BenchRow(backend, precision, batch, "ok", device=device, latency_ms={"p50": p50})


def test_reduced_precision_goal_counts_only_gated_rows():
    """The best reduced precision is the fastest CPU row whose gate passed: a faster row whose
    gate failed, or that was never judged, does not count; the limit follows the CPU's BF16 flags."""
    rows = [
        _row("onnxruntime", "fp32", 100.0),
        _row("openvino", "int8", 30.0),
        _row("openvino", "bf16", 60.0),
        _row("onnxruntime", "int8", 20.0),
    ]
    gates = {"openvino int8": False, "openvino bf16": True}
    (g,) = [
        g
        for g in performance_goals(rows, [], gates, {"cpu_matrix_features": ["avx2", "avx512_bf16"]})
        if g.goal.startswith("best gated")
    ]
    assert g.value == pytest.approx(0.6) and g.limit == 0.4 and not g.met and "openvino bf16" in str(g.detail)
    (g,) = [
        g
        for g in performance_goals(rows, [], gates, {"cpu_matrix_features": ["avx2"]})
        if g.goal.startswith("best gated")
    ]
    assert g.limit == 0.7 and g.met
    gates["openvino int8"] = True
    (g,) = [
        g
        for g in performance_goals(rows, [], gates, {"cpu_matrix_features": ["amx_bf16"]})
        if g.goal.startswith("best gated")
    ]
    assert g.value == pytest.approx(0.3) and g.met and "openvino int8" in str(g.detail)
    (g,) = [g for g in performance_goals(rows, [], {"openvino int8": False}, {}) if g.goal.startswith("best gated")]
    assert g.value is None and not g.met and "openvino int8 FAILED" in str(g.detail)
    assert [r.to_json() for r in ratios(rows)] == [
        {"ratio": "openvino bf16 / onnxruntime fp32", "batch": 1, "value": pytest.approx(0.6)},
        {"ratio": "openvino int8 / onnxruntime fp32", "batch": 1, "value": pytest.approx(0.3)},
    ]


@pytest.mark.parametrize("mode", ["sdp", "sdp+"])
def test_flops_match_flop_counter(tiny, uint8_images, mode):
    """With the math SDPA kernel (the fused CPU kernel hides from FlopCounterMode) every product
    of the reference is seen."""
    visual = tiny.clip.visual
    heads = random_heads(visual.conv1.out_channels, visual.proj.shape[1]) if mode == "sdp+" else None
    text = torch.nn.functional.normalize(torch.randn(visual.proj.shape[1], 2), dim=0)
    model = SDPModel(visual, text, tiny.image_size, heads=heads).eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(uint8_images(2, tiny.image_size))
    assert (
        counter.get_total_flops() == 2 * get_method(mode).flops(ViTDims.from_visual(visual, tiny.image_size))["total"]
    )


def test_plain_encoding_flops_match_flop_counter(tiny, uint8_images):
    """open_clip's fused attention hides from FlopCounterMode; the math SDPA kernel does not."""
    visual = tiny.clip.visual
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            visual(normalize(uint8_images(2, tiny.image_size)))
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    assert counter.get_total_flops() == 2 * plain_encoding_flops(ViTDims.from_visual(visual, tiny.image_size))


def test_flops_by_hand_for_the_tiny_config(tiny):
    d = ViTDims.from_visual(tiny.clip.visual, tiny.image_size)
    assert (d.width, d.layers, d.mlp, d.tokens, d.embed_dim) == (64, 8, 256, 37, 64)
    # qkv 2*37*64*192 + q k^T and A v 2*(2*37*37*64) + out 2*37*64*64 + MLP 2*(2*37*64*256)
    assert original_block_flops(d) == 909_312 + 350_464 + 303_104 + 2_424_832
    assert get_method("sdp").flops(d)["patch_embed"] == 2 * 36 * 64 * 768


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--artifacts", "/nonexistent/bench"], "not a clipad artifact directory"),
        (["--batch", "0"], "--batch must be an integer in [1, 1024]"),
        (["--batch", "1,x"], "--batch takes comma-separated values"),
        (
            ["--backends", "torch,tflite"],
            "--backends must be one of torch, onnxruntime, tensorrt, triton, openvino, got 'tflite'",
        ),
        (["--precision", "fp8"], "--precision must be one of fp32, fp16, int8, bf16, got 'fp8'"),
        (["--attention", "flash"], "--attention must be one of fused, explicit, got 'flash'"),
    ],
)
def test_bad_input_is_one_line(capsys, artifacts, args, fragment):
    base = [] if "--artifacts" in args else ["--artifacts", str(artifacts.root)]
    code, _, err = run(capsys, "bench", *base, *args, "--quiet")
    assert_one_line_error(code, err, fragment)


def test_nothing_available_is_one_line(capsys, artifacts):
    code, _, err = run(
        capsys,
        "bench",
        "--artifacts",
        artifacts.root,
        "--backends",
        "tensorrt",
        "--iterations",
        "1",
        "--warmup",
        "0",
        "--no-parity",
        "--quiet",
    )
    assert_one_line_error(code, err, "no backend/precision could run here", "model.plan")


def test_report_json_round_trips(bench_run):
    """The typed report reads back what it wrote, key for key and in order; the markdown is the same."""
    _, stdout, res, _ = bench_run
    report = BenchReport.from_json(res)
    assert json.dumps(report.to_json()) == json.dumps(res)
    assert all(isinstance(r, BenchRow) for r in report.rows) and report.ratios is not None
    assert report.describe() in stdout


@pytest.mark.parametrize("name", ["bench_cpu.json", "bench_cpu_edge.json", "bench_openvino_cpu.json"])
def test_published_reports_still_read(name):
    """docs/bench_*.json, written by earlier versions (some before attention and ratios), read and describe."""
    from pathlib import Path

    res = json.loads((Path(__file__).resolve().parents[1] / "docs" / name).read_text())
    report = BenchReport.from_json(res)
    assert [g.to_json() for g in report.goals] == res["goals"]
    assert (report.ratios is None) == ("ratios" not in res)
    assert len(report.describe().splitlines()) > len(res["rows"])
    if "attention" in res["rows"][0]:  # written with every key of today: identical
        assert json.dumps(report.to_json()) == json.dumps(res)
