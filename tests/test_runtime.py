"""The streaming runtime and `clipad predict`: sources, the latest-frame policy, sinks, shutdown,
bad input, and the events/predictions contracts. A generated video and image folders stand in
for cameras; a closed loopback port stands in for a refusing RTSP server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from clipad.data.colour import to_rgb
from clipad.data.images import resize_to_model
from clipad.data.synth import sample_images
from clipad.runtime.backends import open_backend, select_backend
from clipad.runtime.pipeline import Pipeline
from clipad.runtime.sources import LiveSource
from tests.helpers import assert_one_line_error, closed_port, run, write_video

EVENT_KEYS = {"frame": int, "source": str, "time": float, "image_prob": float, "map_max": float, "latency_ms": float}


def check_event(e: dict) -> None:
    for k, t in EVENT_KEYS.items():
        assert isinstance(e[k], t), (k, e[k])
    assert e["score"] is None and e["label"] is None  # uncalibrated artifacts


def test_run_video_every_frame_in_order(art, tmp_path, capsys):
    write_video(tmp_path / "v.avi", 12)
    code, _, err = run(
        capsys,
        "run",
        "--source",
        tmp_path / "v.avi",
        "--artifacts",
        art.root,
        "--backend",
        "onnxruntime",
        "--events",
        tmp_path / "ev.jsonl",
        "--save",
        tmp_path / "o.avi",
        "--status-every",
        0.1,
    )
    assert code == 0, err
    events = [json.loads(ln) for ln in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert [e["frame"] for e in events] == list(range(12))
    for e in events:
        check_event(e)
    assert "uncalibrated" in err and "summary: 12 frames" in err
    (video,) = tmp_path.glob("o-*.avi")  # named by the run (runfiles.video_name)
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 160


def test_events_match_the_backend(art, tmp_path, capsys):
    """Records carry exactly what the backend computes on the shared resize of each frame."""
    images = write_video(tmp_path / "v.avi", 3)
    code, _, err = run(
        capsys,
        "run",
        "--source",
        tmp_path / "v.avi",
        "--artifacts",
        art.root,
        "--backend",
        "onnxruntime",
        "--events",
        tmp_path / "ev.jsonl",
    )
    assert code == 0, err
    events = [json.loads(ln) for ln in (tmp_path / "ev.jsonl").read_text().splitlines()]
    amap, prob = open_backend(art, "onnxruntime", "fp32", "cpu")(
        np.stack([resize_to_model(im, art.geometry) for im in images])
    )
    np.testing.assert_allclose([e["image_prob"] for e in events], prob, rtol=1e-6)  # FFV1 is lossless
    np.testing.assert_allclose([e["map_max"] for e in events], amap.reshape(3, -1).max(1), rtol=1e-6)


def test_run_folder_and_glob_sources_batched_together(art, tmp_path, capsys):
    for i, im in enumerate(sample_images(3)):
        cv2.imwrite(str(tmp_path / f"a{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    (tmp_path / "sub").mkdir()
    shutil.copy(tmp_path / "a0.png", tmp_path / "sub" / "b.png")
    code, _, err = run(
        capsys,
        "run",
        "--source",
        tmp_path / "sub",
        "--source",
        str(tmp_path / "a*.png"),
        "--artifacts",
        art.root,
        "--events",
        tmp_path / "ev.jsonl",
    )
    assert code == 0, err
    sources = [json.loads(ln)["source"] for ln in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert sorted(Path(s).name for s in sources) == ["a0.png", "a1.png", "a2.png", "b.png"]


def test_truncated_video_skips_bad_frames(art, tmp_path, capsys):
    write_video(tmp_path / "v.avi", 20)
    data = (tmp_path / "v.avi").read_bytes()
    (tmp_path / "t.avi").write_bytes(data[: len(data) // 2])
    code, _, err = run(
        capsys, "run", "--source", tmp_path / "t.avi", "--artifacts", art.root, "--events", tmp_path / "ev.jsonl"
    )
    assert code == 0, err
    n = len((tmp_path / "ev.jsonl").read_text().splitlines())
    assert 0 < n < 20
    import re

    bad = int(re.search(r"summary: .* bad (\d+)", err).group(1))
    assert bad > 0 and n + bad <= 20  # undecodable frames are counted, not fed to the model


def test_unusual_frames_become_rgb(art, tmp_path, capsys):
    grey = np.tile(np.arange(64, dtype=np.uint8), (48, 1))
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 7)])
    deep = grey.astype(np.uint16) * 257
    assert to_rgb(grey).shape == to_rgb(rgba).shape == to_rgb(deep).shape == (48, 64, 3)
    assert np.array_equal(to_rgb(deep), to_rgb(grey))
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV order
    assert to_rgb(bgr)[0, 0].tolist() == [0, 0, 255]
    for name, img in (("grey.png", grey), ("rgba.png", rgba), ("deep.png", deep)):
        cv2.imwrite(str(tmp_path / name), img)
    big = np.zeros((8192, 8192, 3), np.uint8)
    big[::64] = 255
    cv2.imwrite(str(tmp_path / "huge.png"), big)
    code, out, err = run(capsys, "predict", tmp_path, "--artifacts", art.root, "--out", tmp_path / "p", "--quiet")
    assert code == 0, err
    preds = [json.loads(ln) for ln in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4


def test_predict_contract_and_maps(art, tmp_path, capsys):
    size = art.manifest.image_size
    images = sample_images(3)
    for i, im in enumerate(images):
        cv2.imwrite(str(tmp_path / f"x{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    exact = resize_to_model(images[0], size)
    cv2.imwrite(str(tmp_path / "exact.png"), cv2.cvtColor(exact, cv2.COLOR_RGB2BGR))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, out, err = run(
        capsys,
        "predict",
        tmp_path,
        "--artifacts",
        art.root,
        "--out",
        tmp_path / "p",
        "--save-maps",
        "--save-overlays",
        "--quiet",
    )
    assert code == 0, err
    preds = [json.loads(ln) for ln in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and "1 unreadable skipped" in out
    for p in preds:
        assert set(p) == {"source", "image_prob", "map_max", "fused", "score", "label", "defect_area", "error", "files"}
        assert p["error"] is None
        # every record names the files it wrote, relative to --out, so repeated stems stay linked
        assert (tmp_path / "p" / p["files"]["map"]).is_file() and (tmp_path / "p" / p["files"]["overlay"]).is_file()
        assert p["files"]["mask"] is None  # uncalibrated: no mask
        assert Path(p["files"]["map"]).stem == Path(p["source"]).stem
    m = np.load(tmp_path / "p" / "maps" / "exact.npy")
    assert m.shape == (size, size) and m.dtype == np.float32
    assert np.array_equal(resize_to_model(exact, size), exact)  # model-resolution input is not resampled
    amap, _ = open_backend(art, "onnxruntime", "fp32", "cpu")(exact[None])
    np.testing.assert_allclose(m, amap[0], rtol=1e-6)
    assert (tmp_path / "p" / "overlays" / "x1.png").is_file()


def test_refusing_stream_and_missing_camera(art, tmp_path, capsys):
    t0 = time.time()
    code, _, err = run(capsys, "run", "--source", f"rtsp://127.0.0.1:{closed_port()}/line1", "--artifacts", art.root)
    assert_one_line_error(code, err, "cannot open stream rtsp://127.0.0.1")
    assert time.time() - t0 < 30
    code, _, err = run(capsys, "run", "--camera", 7, "--artifacts", art.root)
    assert_one_line_error(code, err, "no camera at index 7")


def test_one_bad_source_does_not_stop_the_others(art, tmp_path, capsys):
    write_video(tmp_path / "v.avi", 3)
    code, _, err = run(
        capsys,
        "run",
        "--camera",
        7,
        "--source",
        tmp_path / "v.avi",
        "--artifacts",
        art.root,
        "--events",
        tmp_path / "ev.jsonl",
    )
    assert code == 0, err
    assert "warning: no camera at index 7" in err
    assert len((tmp_path / "ev.jsonl").read_text().splitlines()) == 3


def test_artifact_problems(art, tmp_path, capsys):
    copy = tmp_path / "a"
    shutil.copytree(art.root, copy)
    write_video(tmp_path / "v.avi", 2)
    (copy / "model.onnx").write_bytes((copy / "model.onnx").read_bytes()[:-1] + b"x")
    code, _, err = run(capsys, "run", "--source", tmp_path / "v.avi", "--artifacts", copy, "--backend", "onnxruntime")
    assert_one_line_error(code, err, "does not match the sha256")
    (copy / "model.onnx").unlink()
    code, _, err = run(capsys, "run", "--source", tmp_path / "v.avi", "--artifacts", copy, "--backend", "onnxruntime")
    assert_one_line_error(code, err, "has no model.onnx")


def test_events_file_on_full_or_read_only_disk(art, tmp_path, capsys):
    write_video(tmp_path / "v.avi", 3)
    code, _, err = run(capsys, "run", "--source", tmp_path / "v.avi", "--artifacts", art.root, "--events", "/dev/full")
    assert_one_line_error(code, err, "events file /dev/full", "No space left on device")
    code, _, err = run(
        capsys, "run", "--source", tmp_path / "v.avi", "--artifacts", art.root, "--events", "/proc/clipad.jsonl"
    )
    assert_one_line_error(code, err, "cannot write events file /proc/clipad.jsonl")


class SlowBackend:
    """A real backend made slow, standing in for a busy GPU: the pipeline is what is tested."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay, self.max_batch, self.name, self.precision = (
            inner,
            delay,
            inner.max_batch,
            "slow",
            "fp32",
        )

    def __call__(self, images):
        time.sleep(self.delay)
        return self.inner(images)

    def describe(self):
        return "slow"


def test_live_source_keeps_only_the_latest_frame(art, tmp_path):
    """A fast live source (a video file read at full speed by the grabber thread) against a
    slow backend: frames are dropped, never queued, and none is older than one inference
    period plus one camera frame when inference starts."""
    write_video(tmp_path / "v.avi", 200)
    src = LiveSource(str(tmp_path / "v.avi"), name="fast")
    # A generous delay keeps the bounds meaningful under load: a queueing source would make the
    # k-th batch's frame about k inference periods old, far above one period plus slack.
    delay = 0.4
    pipe = Pipeline(
        SlowBackend(open_backend(art, "onnxruntime", "fp32", "cpu"), delay),
        [src],
        art.manifest.image_size,
        None,
        [],
        max_frames=6,
        status_every=999,
        log=lambda s: None,
    )
    records = []
    pipe.sinks = [
        type("Collect", (), {"write": lambda self, r: records.append(r.record), "close": lambda self: None})()
    ]
    summary = pipe.run()
    assert summary.frames == 6 and summary.dropped > 20
    # When inference starts, the frame is at most one inference period (plus one camera frame
    # and scheduling slack) old: it was grabbed while the previous batch was being inferred.
    assert max(summary.frame_age_ms) / 1000 <= delay + 0.3
    for r in records:  # and at result time, at most that plus its own inference
        assert r.latency_ms / 1000 <= 2 * delay + 0.3


def test_sigterm_stops_cleanly(art, tmp_path):
    write_video(tmp_path / "v.avi", 400)
    events, video = tmp_path / "ev.jsonl", tmp_path / "o.avi"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipad",
            "run",
            "--source",
            str(tmp_path / "v.avi"),
            "--artifacts",
            str(art.root),
            "--backend",
            "torch",
            "--device",
            "cpu",
            "--events",
            str(events),
            "--save",
            str(video),
        ],
        cwd=Path(__file__).parents[1],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and (not events.exists() or len(events.read_text().splitlines()) < 5):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in err
    lines = events.read_text().splitlines()
    assert 5 <= len(lines) < 400 and all(json.loads(ln)["frame"] == i for i, ln in enumerate(lines))
    (made,) = tmp_path.glob("o-*.avi")  # named by the run (runfiles.video_name)
    cap = cv2.VideoCapture(str(made))  # finalised: readable, one frame per event
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(lines)


def test_show_without_a_display_says_what_to_do(art, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    write_video(tmp_path / "v.avi", 2)
    code, _, err = run(capsys, "run", "--source", tmp_path / "v.avi", "--artifacts", art.root, "--show")
    assert_one_line_error(code, err, "--show needs a display", "--serve")


def test_auto_backend_says_which(art):
    be = select_backend(art, "auto", "cpu")
    assert be.name == "onnxruntime" and "CPUExecutionProvider" in be.describe()


def test_hanging_stream_times_out(art, capsys):
    """A server that accepts the connection and never answers: a read timeout, not a hang."""
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held = []
    threading.Thread(target=lambda: [held.append(srv.accept()) for _ in range(4)], daemon=True).start()
    try:
        t0 = time.time()
        code, _, err = run(
            capsys, "run", "--source", f"rtsp://127.0.0.1:{srv.getsockname()[1]}/line1", "--artifacts", art.root
        )
        assert_one_line_error(code, err, "cannot open stream", "within 5 s")
        assert time.time() - t0 < 30
    finally:
        srv.close()


def test_lost_stream_is_reopened_and_reported(art, tmp_path):
    """A live source whose stream ends (a short file) is reopened with backoff and says so."""
    write_video(tmp_path / "v.avi", 5)
    src = LiveSource(str(tmp_path / "v.avi"), name="cam", backoff=(0.05, 0.2))
    logs = []
    pipe = Pipeline(
        open_backend(art, "onnxruntime", "fp32", "cpu"),
        [src],
        art.manifest.image_size,
        None,
        [],
        max_frames=12,
        status_every=999,
        log=logs.append,
    )
    summary = pipe.run()
    assert summary.frames == 12 and summary.reconnects >= 1
    assert any("stream lost" in line for line in logs) and any("reconnected" in line for line in logs)
