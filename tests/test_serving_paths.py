"""Serving paths of `clipad run` / `clipad predict` without other tests: backend and precision
selection, snapshots of anomalous frames on calibrated artifacts, several live sources in one
inference call, a backend failing mid-run, and SIGINT.

Everything runs the tiny exported model (random weights) through the real backends; wrappers
around a real backend only record batch sizes or raise once, because there the pipeline is what
is tested.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from clipad.core.progress import Tasks
from clipad.data.images import load_image, read_rgb, resize_to_model
from clipad.data.synth import make_synthetic, sample_images
from clipad.deploy import parity
from clipad.deploy.artifacts import load_artifacts
from clipad.deploy.export import ExportConfig, export
from clipad.model.prompts import PROMPT_SETS
from clipad.runtime.backends import open_backend
from clipad.runtime.pipeline import BACKEND_RETRIES, Pipeline
from clipad.runtime.runfiles import snapshot_stem
from clipad.runtime.sinks import EventsSink
from clipad.runtime.sources import LiveSource, VideoFileSource
from tests.helpers import assert_one_line_error, run, run_in_thread, signal_run

CPU_LINE = "backend: onnxruntime fp32 (CPUExecutionProvider)"
REPO = Path(__file__).parents[1]


def _ort_gpu() -> bool:
    import onnxruntime as ort

    return any(p in ort.get_available_providers() for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))


def write_video(path: Path, n: int, size=(160, 128), seed: int = 0) -> list[np.ndarray]:
    """A lossless (FFV1) video of synthetic parts; returns its RGB frames."""
    images = sample_images(n, width=size[0], height=size[1], seed=seed)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, size)
    for im in images:
        w.write(cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    w.release()
    return images


def _export(tiny, out: Path, precision: str):
    cfg = ExportConfig(category="washer", out=out, prompts=PROMPT_SETS["industrial"], max_batch=4, precision=precision)
    return export(tiny, cfg, Tasks(None))


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny):
    """FP32-only artifacts (max batch 4)."""
    return _export(tiny, tmp_path_factory.mktemp("sp") / "art", "fp32")


@pytest.fixture(scope="module")
def art16(tmp_path_factory, tiny):
    """Artifacts with model.fp16.onnx. With random weights the FP16 graph misses its batch-1 parity
    limit (README), so the limits are widened for this export only: what is tested here is which
    graph the runtime serves, not FP16 accuracy."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(parity.TOLERANCES, "fp16", {"rel_l2": 1.0, "prob_max_abs": 1.0, "top1pct_agreement": 0.0})
        a = _export(tiny, tmp_path_factory.mktemp("sp16") / "art", "fp16")
    assert a.manifest.precisions == ["fp32", "fp16"] and a.has("model.fp16.onnx")
    return a


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Synthetic washer images: ``good`` (10 good parts) and ``bad`` (4 with defects)."""
    root = tmp_path_factory.mktemp("spimg")
    make_synthetic(root / "s", n_train=10, n_good=1, n_defect=2, seed=5)
    shutil.copytree(root / "s" / "washer" / "train" / "good", root / "good")
    (root / "bad").mkdir()
    for p in sorted((root / "s" / "washer" / "test").glob("[!g]*/*.png")):
        shutil.copy(p, root / "bad" / f"{p.parent.name}_{p.name}")
    return root


def preds(folder: Path) -> list[dict]:
    return [json.loads(ln) for ln in (folder / "predictions.jsonl").read_text().splitlines()]


# -- a. backend and precision selection -----------------------------------------------------


@pytest.mark.skipif(
    _ort_gpu(),
    reason="a GPU execution provider is installed: auto then serves on the GPU, not the CPU path tested here",
)
def test_auto_backend_on_fp32_artifacts_is_onnxruntime_cpu_and_says_so(art, images, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "predict",
        images / "bad",
        "--artifacts",
        art.root,
        "--backend",
        "auto",
        "--out",
        tmp_path / "p",
        "--quiet",
    )
    assert code == 0, err
    assert CPU_LINE in err, err
    # and what it serves is ONNX Runtime's FP32 graph
    x = np.stack([load_image(p, art.geometry) for p in sorted((images / "bad").iterdir())])
    _, prob = open_backend(art, "onnxruntime", "fp32", "cpu")(x)
    np.testing.assert_allclose([r["image_prob"] for r in preds(tmp_path / "p")], prob, rtol=1e-6)


def test_tensorrt_without_a_plan_is_one_line(art, images, tmp_path, capsys):
    code, _, err = run(
        capsys, "predict", images / "bad", "--artifacts", art.root, "--backend", "tensorrt", "--out", tmp_path / "p"
    )
    assert_one_line_error(code, err, "model.plan")
    assert not (tmp_path / "p" / "predictions.jsonl").exists()


def test_int8_without_the_int8_graph_names_the_command(art, images, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "predict",
        images / "bad",
        "--artifacts",
        art.root,
        "--backend",
        "onnxruntime",
        "--precision",
        "int8",
        "--out",
        tmp_path / "p",
    )
    assert_one_line_error(code, err, "model.int8.onnx", "clipad calibrate --int8")


def test_torch_fp16_on_cpu_is_one_line(art, images, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "predict",
        images / "bad",
        "--artifacts",
        art.root,
        "--backend",
        "torch",
        "--precision",
        "fp16",
        "--device",
        "cpu",
        "--out",
        tmp_path / "p",
    )
    assert_one_line_error(code, err, "fp16")
    assert not (tmp_path / "p" / "predictions.jsonl").exists()


def test_fp16_without_the_fp16_graph_is_one_line(art, images, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "predict",
        images / "bad",
        "--artifacts",
        art.root,
        "--backend",
        "onnxruntime",
        "--precision",
        "fp16",
        "--out",
        tmp_path / "p",
    )
    assert_one_line_error(code, err, "model.fp16.onnx")


def test_fp16_graph_is_served_when_asked(art16, images, tmp_path, capsys):
    code, _, err = run(
        capsys,
        "predict",
        images / "bad",
        "--artifacts",
        art16.root,
        "--backend",
        "onnxruntime",
        "--precision",
        "fp16",
        "--device",
        "cpu",
        "--out",
        tmp_path / "p",
        "--quiet",
    )
    assert code == 0, err
    assert "backend: onnxruntime fp16 (CPUExecutionProvider)" in err, err
    import onnxruntime as ort

    x = np.stack([load_image(p, art16.geometry) for p in sorted((images / "bad").iterdir())])
    _, p16 = ort.InferenceSession(str(art16.root / "model.fp16.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": x}
    )
    _, p32 = ort.InferenceSession(str(art16.root / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"image": x}
    )
    got = [r["image_prob"] for r in preds(tmp_path / "p")]
    assert np.max(np.abs(p16 - p32)) > 1e-6  # the two graphs are distinguishable here
    np.testing.assert_allclose(got, p16, rtol=1e-6)  # the FP16 graph's numbers, not the FP32 graph's


@pytest.mark.skipif(
    _ort_gpu(), reason="a GPU execution provider is installed: precision auto then takes FP16 by design"
)
def test_auto_precision_on_cpu_keeps_fp32_even_with_an_fp16_graph(art16, images, tmp_path, capsys):
    code, _, err = run(capsys, "predict", images / "bad", "--artifacts", art16.root, "--out", tmp_path / "p", "--quiet")
    assert code == 0, err
    assert CPU_LINE in err, err


# -- b. snapshots ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibrated(art, images, tmp_path_factory):
    """The FP32 artifacts calibrated on the 10 good images at a 30% false-positive rate, so that
    exactly 3 of those images are anomalous (k = floor(0.3 * 10))."""
    from clipad import cli

    root = tmp_path_factory.mktemp("cal") / "art"
    shutil.copytree(art.root, root)
    code = cli.run(
        ["calibrate", "--artifacts", str(root), "--good", str(images / "good"), "--target-fpr", "0.3", "--quiet"]
    )
    assert code == 0
    return load_artifacts(root)


def test_snapshots_of_anomalous_frames_only(calibrated, images, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(images / "good", src)
    for p in sorted((images / "bad").iterdir()):
        shutil.copy(p, src / p.name)
    snaps, ev = tmp_path / "snaps", tmp_path / "ev.jsonl"
    code, _, err = run(
        capsys,
        "run",
        "--source",
        src,
        "--artifacts",
        calibrated.root,
        "--backend",
        "onnxruntime",
        "--events",
        ev,
        "--snapshots",
        snaps,
    )
    assert code == 0, err
    events = [json.loads(ln) for ln in ev.read_text().splitlines()]
    files = sorted(src.iterdir())
    assert len(events) == len(files) == 14
    labels = [e["label"] for e in events]
    assert set(labels) == {"normal", "anomalous"}
    good = [e for e in events if not Path(e["source"]).name.startswith(("scratch", "spot"))]
    assert len(good) == 10 and sum(e["label"] == "anomalous" for e in good) == 3  # the calibration images at FPR 0.3

    size = calibrated.geometry
    x = np.stack([load_image(p, size) for p in files])
    maps, _ = open_backend(calibrated, "onnxruntime", "fp32", "cpu")(x)
    assert (
        min(np.abs(maps[i] - maps[j]).max() for i in range(len(maps)) for j in range(i)) > 1e-5
    )  # maps tell frames apart
    thr = calibrated.manifest.calibration.pixel_threshold
    expected_files = set()
    for e in events:
        path = Path(e["source"])
        i = files.index(path)
        stem = snapshot_stem(e["source"], e["run"], e["frame"])
        assert stem.startswith(path.stem + "_") and stem.endswith(f"_{e['run']}_{e['frame']:06d}")
        parts = {k: snaps / f"{stem}_{k}" for k in ("frame.png", "overlay.png", "map.npy", "mask.png")}
        if e["label"] != "anomalous":
            assert not any(p.exists() for p in parts.values()), stem
            continue
        expected_files |= {p.name for p in parts.values()}
        assert all(p.is_file() for p in parts.values()), stem
        frame = cv2.cvtColor(cv2.imread(str(parts["frame.png"])), cv2.COLOR_BGR2RGB)
        assert np.array_equal(frame, read_rgb(path))  # the original frame, at its own size, in RGB
        overlay = cv2.imread(str(parts["overlay.png"]))
        assert overlay.shape == frame.shape
        m = np.load(parts["map.npy"])
        assert m.shape == size.hw and m.dtype == np.float32
        np.testing.assert_allclose(m, maps[i], rtol=0, atol=1e-6)
        mask = cv2.imread(str(parts["mask.png"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == size.hw and np.array_equal(mask > 0, maps[i] >= thr)
    assert {p.name for p in snaps.iterdir()} == expected_files  # nothing else, nothing for normal frames


# -- c. several live sources in one batch ------------------------------------------------------


class Recording:
    """A real backend that records the size of every batch it is given."""

    def __init__(self, inner):
        self.inner, self.max_batch, self.name, self.precision = inner, inner.max_batch, inner.name, inner.precision
        self.sizes: list[int] = []

    def __call__(self, images):
        self.sizes.append(len(images))
        return self.inner(images)

    def describe(self):
        return self.inner.describe()


class Collect:
    def __init__(self):
        self.items = []

    def write(self, result):
        self.items.append((result.record, result.image.copy(), result.amap.copy()))

    def close(self):
        pass


def test_two_live_sources_share_inference_calls(art, tmp_path):
    sizes = {"camA": (160, 128), "camB": (128, 96)}  # told apart by their frame sizes
    for i, (name, size) in enumerate(sizes.items()):
        write_video(tmp_path / f"{name}.avi", 40, size=size, seed=i)
    inner = open_backend(art, "onnxruntime", "fp32", "cpu")
    be = Recording(inner)
    sources = [LiveSource(str(tmp_path / f"{n}.avi"), name=n, backoff=(0.05, 0.2)) for n in sizes]
    sink = Collect()
    pipe = Pipeline(be, sources, art.geometry, None, [sink], max_frames=16, status_every=999, log=lambda s: None)
    summary = pipe.run()
    assert summary.frames == 16 and len(sink.items) == 16
    assert 2 in be.sizes and set(be.sizes) <= {1, 2}, be.sizes  # one frame per source per call, both in one call
    assert {p.source for p, _, _ in sink.items} == set(sizes)
    start = 0
    for n in be.sizes:  # records reach the sinks in batch order
        batch = [p.source for p, _, _ in sink.items[start : start + n]]
        assert len(set(batch)) == n, batch  # a shared call holds one frame of each stream
        start += n
    for pred, frame, amap in sink.items:
        w, h = sizes[pred.source]
        assert frame.shape == (h, w, 3), (pred.source, frame.shape)  # the record names the stream its frame came from
        m, p = inner(resize_to_model(frame, art.geometry)[None])
        np.testing.assert_allclose(pred.image_prob, p[0], rtol=1e-5)
        np.testing.assert_allclose(amap, m[0], rtol=0, atol=1e-6)


# -- d. a backend error mid-run ---------------------------------------------------------------


class FailsOnCall:
    """A real backend whose ``n``-th call raises (``times`` calls in a row: a transient fault when
    ``times`` is within the pipeline's retries, a lasting one otherwise)."""

    def __init__(self, inner, n: int, times: int = 10**9):
        self.inner, self.n, self.times, self.calls = inner, n, times, 0
        self.max_batch, self.name, self.precision, self.notes = (
            inner.max_batch,
            inner.name,
            inner.precision,
            inner.notes,
        )

    def __call__(self, images):
        self.calls += 1
        if self.n <= self.calls < self.n + self.times:
            raise RuntimeError(f"device lost (injected on call {self.calls})")
        return self.inner(images)

    def describe(self):
        return self.inner.describe()

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("kind", ["video file", "live"])
def test_a_lasting_backend_error_ends_the_run_and_records_the_batch(art, tmp_path, kind):
    """From the 3rd call on the backend fails: after the retries the run ends (never hangs), the
    summary says why, the frames before the fault are in the events, and the failed batch's frames
    are there too, labelled "error", never silently lost."""
    write_video(tmp_path / "v.avi", 40)
    be = FailsOnCall(open_backend(art, "onnxruntime", "fp32", "cpu"), 3)
    src = (
        VideoFileSource(str(tmp_path / "v.avi"))
        if kind == "video file"
        else LiveSource(str(tmp_path / "v.avi"), name="cam", backoff=(0.05, 0.2))
    )
    ev = tmp_path / "ev.jsonl"
    logged: list[str] = []
    pipe = Pipeline(be, [src], art.manifest.image_size, None, [EventsSink(ev)], status_every=999, log=logged.append)
    out = run_in_thread(pipe.run)
    summary = out["result"]
    assert be.calls == 2 + 1 + BACKEND_RETRIES  # two good calls, the failing one and its retries
    assert "device lost" in summary.error and "recorded as errors" in summary.error
    assert summary.stopped_by == "error" and sum("retrying" in line for line in logged) == BACKEND_RETRIES
    events = [json.loads(line) for line in ev.read_text().splitlines()]  # complete lines only
    per_call = art.max_batch if kind == "video file" else 1
    good, failed = events[: 2 * per_call], events[2 * per_call :]
    assert all(e["label"] is None and e["error"] is None for e in good)  # uncalibrated, scored
    assert len(failed) == per_call and all(e["label"] == "error" and "device lost" in e["error"] for e in failed)
    assert all(e["image_prob"] is None and e["map_max"] is None for e in failed)
    assert summary.frames == len(events) and summary.errors == per_call
    if kind == "video file":
        assert [e["frame"] for e in events] == list(range(3 * per_call))


def test_a_transient_backend_error_is_retried(art, tmp_path):
    """One failing call (a CUDA hiccup) costs a retry, not the run or any frame."""
    write_video(tmp_path / "v.avi", 20)
    be = FailsOnCall(open_backend(art, "onnxruntime", "fp32", "cpu"), 2, times=1)
    ev = tmp_path / "ev.jsonl"
    pipe = Pipeline(
        be,
        [VideoFileSource(str(tmp_path / "v.avi"))],
        art.manifest.image_size,
        None,
        [EventsSink(ev)],
        status_every=999,
        log=lambda s: None,
    )
    summary = run_in_thread(pipe.run)["result"]
    assert summary.error is None and summary.backend_retries == 1 and summary.stopped_by == "end of input"
    events = [json.loads(line) for line in ev.read_text().splitlines()]
    assert [e["frame"] for e in events] == list(range(20)) and not any(e["label"] == "error" for e in events)


def test_backend_error_mid_run_through_clipad_run(art, tmp_path, capsys, monkeypatch):
    """The same lasting fault through `clipad run`: it ends with one line and a non-zero exit,
    after its summary line, and the events before the fault are in the file."""
    from clipad.runtime import serving

    real = serving.select_backend
    monkeypatch.setattr(serving, "select_backend", lambda *a, **k: FailsOnCall(real(*a, **k), 3))
    write_video(tmp_path / "v.avi", 40)
    ev = tmp_path / "ev.jsonl"
    out = run_in_thread(
        lambda: run(
            capsys,
            "run",
            "--source",
            tmp_path / "v.avi",
            "--artifacts",
            art.root,
            "--backend",
            "onnxruntime",
            "--events",
            ev,
        )
    )
    code, _, err = out["result"]
    assert code == 1 and "device lost" in err and "summary: " in err, err
    assert err.strip().splitlines()[-1].startswith("error: the backend failed 3 times in a row"), err
    frames = [json.loads(line)["frame"] for line in ev.read_text().splitlines()]
    assert frames == list(range(3 * art.max_batch))


# -- e. SIGINT -------------------------------------------------------------------------------


def test_sigint_stops_cleanly(art, tmp_path):
    n = 3000
    write_video(tmp_path / "v.avi", n, size=(64, 48))
    events = tmp_path / "ev.jsonl"
    code, err, seconds = signal_run(tmp_path / "v.avi", art.root, events, signal.SIGINT)
    assert seconds < 30
    assert code == 0, err
    assert "Traceback" not in err and "stopped by SIGINT" in err, err
    text = events.read_text()
    assert text.endswith("\n")
    frames = [json.loads(ln)["frame"] for ln in text.splitlines()]  # only complete JSON lines
    assert 5 <= len(frames) < n and frames == list(range(len(frames)))
    summary = [ln for ln in err.splitlines() if ln.startswith("summary: ")]
    assert len(summary) == 1 and summary[0].startswith(f"summary: {len(frames)} frames"), (
        err
    )  # every inferred frame was written


def test_snapshots_of_two_sources_with_the_same_stems_are_both_kept(calibrated, images, tmp_path, capsys):
    """Two image folders that both hold a `000.png` (as MVTec's defect folders do), each an
    anomalous image: every anomalous event keeps its own snapshot."""
    from clipad.calibration.constants import Calibration

    good = sorted((images / "good").iterdir())
    x = np.stack([load_image(p, calibrated.geometry) for p in good])
    maps, prob = open_backend(calibrated, "onnxruntime", "fp32", "cpu")(x)
    _, _, anomalous = Calibration.from_manifest(calibrated.manifest).decide(prob, maps.reshape(len(maps), -1).max(1))
    first, second = [p for p, a in zip(good, anomalous, strict=False) if a][:2]
    for folder, src in (("A", first), ("B", second)):
        (tmp_path / folder).mkdir()
        shutil.copy(src, tmp_path / folder / "000.png")
    snaps, ev = tmp_path / "snaps", tmp_path / "ev.jsonl"
    code, _, err = run(
        capsys,
        "run",
        "--source",
        tmp_path / "A",
        "--source",
        tmp_path / "B",
        "--artifacts",
        calibrated.root,
        "--backend",
        "onnxruntime",
        "--events",
        ev,
        "--snapshots",
        snaps,
    )
    assert code == 0, err
    events = [json.loads(ln) for ln in ev.read_text().splitlines()]
    assert [e["label"] for e in events] == ["anomalous", "anomalous"]
    saved = [np.load(p) for p in sorted(snaps.glob("*_map.npy"))]
    assert len(saved) == 2  # one map per anomalous frame
    for i in (good.index(first), good.index(second)):
        assert any(np.allclose(m, maps[i], rtol=0, atol=1e-6) for m in saved)
