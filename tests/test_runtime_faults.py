"""Faults a run meets on the line: a sink or a source that raises, non-finite model outputs,
decompression bombs, a second writer on one events file, snapshots on a failing disk, SIGHUP,
and statistics that must stay in fixed memory. Real backends throughout; the wrappers below
only inject the fault."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from clipad.calibration.constants import Calibration
from clipad.core.errors import ClipadError
from clipad.data import images as image_path
from clipad.data.images import ImageReadError, read_image
from clipad.methods.base import ImageScore
from clipad.runtime.backends import open_backend
from clipad.runtime.pipeline import WINDOW, Pipeline, Summary
from clipad.runtime.records import FrameResult, Prediction
from clipad.runtime.scoring import NON_FINITE, score_batch
from clipad.runtime.sinks import EventsSink, SnapshotSink, VideoSink
from clipad.runtime.sources import ImageFilesSource, LiveSource, VideoFileSource
from tests.helpers import assert_one_line_error, run, run_in_thread, signal_run, write_video

REPO = Path(__file__).resolve().parents[1]


def strict_json(line: str) -> dict:
    """json.loads that refuses NaN/Infinity tokens, as strict JSON readers (browsers) do."""

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(line, parse_constant=refuse)


class BrokenSink:
    """Raises a plain exception (not a SinkError) on its ``n``-th record: a full disk in np.save,
    an uncreatable folder, a cv2.error."""

    def __init__(self, n: int):
        self.n, self.seen = n, 0

    def write(self, result):
        self.seen += 1
        if self.seen == self.n:
            raise OSError(28, "No space left on device")

    def close(self):
        pass


def test_a_sink_failure_stops_the_run_instead_of_hanging(art, tmp_path):  # noqa: F811
    """Before, only SinkError was caught: any other sink exception killed the writer thread, its
    queue filled and the run waited forever."""
    write_video(tmp_path / "v.avi", 60)
    ev = tmp_path / "ev.jsonl"
    pipe = Pipeline(
        open_backend(art, "onnxruntime", "fp32", "cpu"),
        [VideoFileSource(str(tmp_path / "v.avi"))],
        art.manifest.image_size,
        None,
        [EventsSink(ev), BrokenSink(3)],
        status_every=999,
        log=lambda s: None,
    )
    summary = run_in_thread(pipe.run)["result"]
    assert summary.error.startswith("BrokenSink failed: OSError") and "No space left" in summary.error
    assert summary.stopped_by == "error"
    assert len(ev.read_text().splitlines()) < 60  # stopped early, not after reading everything


def test_a_sink_failure_through_clipad_run_is_one_line(art, tmp_path, capsys, monkeypatch):  # noqa: F811
    from clipad.runtime import run as run_module

    real = run_module.open_sinks
    monkeypatch.setattr(run_module, "open_sinks", lambda *a, **k: [*real(*a, **k), BrokenSink(2)])
    write_video(tmp_path / "v.avi", 30)
    out = run_in_thread(
        lambda: run(capsys, "run", "--source", tmp_path / "v.avi", "--artifacts", art.root, "--backend", "onnxruntime")
    )
    code, _, err = out["result"]
    assert_one_line_error(code, err, "BrokenSink failed")


class RaisingSource(VideoFileSource):
    """A video source whose reader raises after ``n`` frames (a driver bug, a decoder crash)."""

    def __init__(self, path: str, n: int):
        super().__init__(path)
        self.n = n

    def read(self, timeout: float = 1.0):
        if self.stats.frames >= self.n:
            raise RuntimeError("decoder crashed")
        return super().read(timeout)


def test_a_reader_failure_is_an_error_not_the_end_of_input(art, tmp_path):  # noqa: F811
    write_video(tmp_path / "v.avi", 30)
    ev = tmp_path / "ev.jsonl"
    pipe = Pipeline(
        open_backend(art, "onnxruntime", "fp32", "cpu"),
        [RaisingSource(str(tmp_path / "v.avi"), 6)],
        art.manifest.image_size,
        None,
        [EventsSink(ev)],
        status_every=999,
        log=lambda s: None,
    )
    summary = run_in_thread(pipe.run)["result"]
    assert summary.stopped_by == "error" and "failed: RuntimeError: decoder crashed" in summary.error
    assert [strict_json(line)["frame"] for line in ev.read_text().splitlines()] == list(range(6))


class NaNBackend:
    """A real backend whose outputs for every other image are made NaN (map) or infinite (prob)."""

    def __init__(self, inner):
        self.inner, self.max_batch, self.name, self.precision = inner, inner.max_batch, inner.name, inner.precision
        self.calls = 0

    def __call__(self, images):
        amap, prob = self.inner(images)
        amap, prob = amap.copy(), prob.copy()
        amap[::2, 3, 3] = np.nan
        prob[1::4] = np.inf
        return amap, prob

    def describe(self):
        return self.inner.describe()

    def close(self):
        self.inner.close()


def test_non_finite_outputs_fail_closed_and_json_stays_strict(art, tmp_path):  # noqa: F811
    write_video(tmp_path / "v.avi", 8)
    ev = tmp_path / "ev.jsonl"
    backend = NaNBackend(open_backend(art, "onnxruntime", "fp32", "cpu"))
    summary = Pipeline(
        backend,
        [VideoFileSource(str(tmp_path / "v.avi"))],
        art.manifest.image_size,
        None,
        [EventsSink(ev)],
        status_every=999,
        log=lambda s: None,
    ).run()
    events = [strict_json(line) for line in ev.read_text().splitlines()]  # no NaN/Infinity tokens
    assert len(events) == 8
    bad = [e for e in events if e["label"] == "error"]
    assert [e["frame"] for e in bad] == [
        0,
        1,
        2,
        4,
        5,
        6,
    ]  # NaN maps at even positions, inf probs at 1 and 5 (batches of 4)
    assert all(e["error"] == NON_FINITE and e["image_prob"] is None and e["map_max"] is None for e in bad)
    assert summary.errors == 6 and summary.frames == 8


def test_non_finite_outputs_are_never_normal_when_calibrated():
    cal = Calibration(
        prob_range=(0.0, 1.0),
        max_range=(0.0, 1.0),
        threshold=1.0,
        score_range=(0.0, 2.0),
        pixel_threshold=0.5,
        image_score=ImageScore.PROB_PLUS_MAX,
    )
    amap = np.zeros((3, 4, 4), np.float32)
    amap[1, 0, 0] = np.nan
    prob = np.array([0.1, 0.1, np.nan], np.float32)  # a NaN compares false with the threshold: "normal" before
    preds = score_batch(amap, prob, cal, ["a", "b", "c"])
    assert [p.label for p in preds] == ["normal", "error", "error"]
    assert preds[1].score is None and preds[2].fused is None


def test_decompression_bombs_are_skipped_and_counted(tmp_path, monkeypatch):
    assert image_path.MAX_PIXELS > 8192 * 8192  # far above camera frames (an 8K frame is tested in test_runtime.py)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "small.png")
    monkeypatch.setattr(image_path, "MAX_PIXELS", 1000)  # our explicit limit, checked before decoding
    with pytest.raises(ImageReadError, match="50x40 pixels is more than the limit of 1000"):
        read_image(tmp_path / "big.png")
    src = ImageFilesSource(str(tmp_path))
    frames = [f for f in iter(lambda: src.read(0), None)]
    assert [Path(f.source).name for f in frames] == ["small.png"] and src.stats.bad_frames == 1
    monkeypatch.setattr(image_path, "MAX_PIXELS", 10**9)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # PIL's own bomb error (above 2x its limit) is caught too
    with pytest.raises(ImageReadError, match="cannot read image"):
        read_image(tmp_path / "big.png")


def test_events_are_appended_and_locked(tmp_path):
    ev = tmp_path / "ev.jsonl"
    first = EventsSink(ev)
    first.write(
        FrameResult(Prediction("a", 0.5, 0.1, frame=0), np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.float32))
    )
    with pytest.raises(ClipadError, match="being written by another clipad run"):
        EventsSink(ev)
    first.close()
    second = EventsSink(ev)  # the earlier run's events are kept
    second.write(
        FrameResult(Prediction("b", 0.5, 0.1, frame=0), np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.float32))
    )
    second.close()
    assert [strict_json(line)["source"] for line in ev.read_text().splitlines()] == ["a", "b"]


def test_sources_that_fail_to_open_leave_the_events_file_untouched(art, tmp_path, capsys):  # noqa: F811
    ev = tmp_path / "ev.jsonl"
    ev.write_text('{"frame": 0}\n')
    code, _, err = run(capsys, "run", "--source", tmp_path / "missing.mp4", "--artifacts", art.root, "--events", ev)
    assert_one_line_error(code, err, "source not found")
    assert ev.read_text() == '{"frame": 0}\n'


def anomalous(source: str, frame: int, t: float) -> Prediction:
    return Prediction(source, 0.9, 1.0, 1.5, 0.9, "anomalous", 0.1, frame=frame, time=t)


def test_snapshots_are_rate_limited_per_source_and_survive_write_failures(tmp_path):
    frame, amap = np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4), np.float32)
    now = [0.0]
    sink = SnapshotSink(tmp_path / "s", interval=1.0, clock=lambda: now[0])
    for i, (src, t) in enumerate([("cam1", 0.0), ("cam1", 0.5), ("cam2", 0.6), ("cam1", 1.2)]):
        now[0] = t
        sink.write(FrameResult(anomalous(src, i, t), frame, amap))
    assert sink.written == 3 and sink.skipped == 1  # cam1 at 0.5 s is within a second of its last
    assert len(list((tmp_path / "s").glob("*_map.npy"))) == 3
    import shutil

    shutil.rmtree(tmp_path / "s")  # the folder vanishes (an unmounted disk): writes fail
    now[0] = 5.0
    sink.write(FrameResult(anomalous("cam1", 9, 5.0), frame, amap))
    assert sink.failed == 1 and sink.notes and "not written" in sink.notes[0]


def test_statistics_stay_in_fixed_memory():
    s = Summary()
    for i in range(3 * WINDOW):
        for v in s.latency_ms.values():
            v.append(float(i))
        s.frame_age_ms.append(float(i))
    assert all(len(v) == WINDOW for v in s.latency_ms.values()) and len(s.frame_age_ms) == WINDOW
    assert s.percentiles()["inference"][0] >= 2 * WINDOW  # the percentiles describe the recent window
    assert "errors 0" in s.line()


def test_sighup_stops_cleanly(art, tmp_path):  # noqa: F811
    write_video(tmp_path / "v.avi", 2000, size=(64, 48))
    events = tmp_path / "ev.jsonl"
    code, err, _ = signal_run(tmp_path / "v.avi", art.root, events, signal.SIGHUP)
    assert code == 0 and "stopped by SIGHUP" in err, err
    lines = events.read_text().splitlines()
    assert [strict_json(line)["frame"] for line in lines] == list(range(len(lines)))


class FlakyCapture:
    """Wraps a real cv2.VideoCapture; its 3rd read raises, as a driver or decoder error would."""

    def __init__(self, cap):
        self.cap, self.reads = cap, 0

    def read(self):
        self.reads += 1
        if self.reads == 3:
            raise RuntimeError("driver error")
        return self.cap.read()

    def release(self):
        self.cap.release()


class FlakyLiveSource(LiveSource):
    def _open(self):
        cap = super()._open()
        return FlakyCapture(cap) if cap is not None else None


def test_a_capture_thread_error_is_a_lost_stream_that_reconnects(tmp_path):
    write_video(tmp_path / "v.avi", 50)
    src = FlakyLiveSource(str(tmp_path / "v.avi"), name="cam", backoff=(0.02, 0.1))
    try:
        deadline = time.time() + 20
        while time.time() < deadline and src.stats.reconnects < 2:
            time.sleep(0.02)
        assert src.stats.lost >= 2 and src.stats.reconnects >= 2  # each new capture fails once and is reopened
        assert any("capture failed (RuntimeError: driver error), reconnecting" in e for e in src.stats.events)
        assert src._thread.is_alive() and src.read(timeout=5) is not None  # the camera keeps delivering
    finally:
        src.close()


class SilentCapture:
    """A capture that is open but delivers nothing: each read blocks, then fails (an unplugged camera)."""

    def read(self):
        time.sleep(0.3)
        return False, None

    def release(self):
        pass


class SilentLiveSource(LiveSource):
    def _open(self):
        return SilentCapture()


def test_a_silent_camera_does_not_slow_the_others(art, tmp_path):  # noqa: F811
    """Cameras are waited on together: with one camera delivering nothing, ten batches of the other
    take far less than ten of the old per-camera 0.5 s waits."""
    write_video(tmp_path / "v.avi", 200)
    live = LiveSource(str(tmp_path / "v.avi"), name="cam")
    silent = SilentLiveSource("rtsp://127.0.0.1:9/none", name="unplugged")
    pipe = Pipeline(
        open_backend(art, "onnxruntime", "fp32", "cpu"),
        [silent, live],
        art.manifest.image_size,
        None,
        [],
        max_frames=10,
        status_every=999,
        log=lambda s: None,
    )
    t0 = time.perf_counter()
    summary = run_in_thread(pipe.run)["result"]
    assert summary.frames == 10 and summary.error is None
    assert time.perf_counter() - t0 < 3.0  # one 0.5 s wait per batch for the silent camera would take >= 5 s


def test_credentials_never_appear_in_source_names_or_errors(capsys):
    from clipad.core.redaction import redact

    assert redact("rtsp://admin:s3cret@10.1.2.3:554/stream1") == "rtsp://***@10.1.2.3:554/stream1"
    assert redact("http://user@cam/x.mjpg") == "http://***@cam/x.mjpg" and redact("/data/a@b.png") == "/data/a@b.png"
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: the stream is refused
    with pytest.raises(ClipadError) as err:
        LiveSource(f"rtsp://admin:s3cret@127.0.0.1:{port}/stream1")
    assert "s3cret" not in str(err.value) and "rtsp://***@127.0.0.1" in str(err.value)


def test_opencv_warnings_stay_out_of_the_way_unless_debug(art, tmp_path):  # noqa: F811
    """A camera that does not exist: one line of clipad's own, no OpenCV warnings (they return with --debug)."""

    def stderr(*extra):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "clipad",
                *extra,
                "run",
                "--camera",
                "97",
                "--artifacts",
                str(art.root),
                "--backend",
                "onnxruntime",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**{k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}, "HF_HUB_OFFLINE": "1"},
        )
        assert proc.returncode == 1
        return proc.stderr

    quiet = stderr()
    assert "no camera at index 97" in quiet and "WARN" not in quiet and "global " not in quiet, quiet
    assert "WARN" in stderr("--debug")  # OpenCV does warn on a missing camera: the quiet run hid it


def test_events_rotate_at_their_size_limit(tmp_path):
    ev = tmp_path / "ev.jsonl"
    sink = EventsSink(ev, max_bytes=600, keep=50)
    frame, amap = np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.float32)
    for i in range(20):
        sink.write(FrameResult(Prediction("cam", 0.5, 0.1, frame=i, time=float(i)), frame, amap))
    sink.close()
    rotated = sorted(tmp_path.glob("ev.jsonl.*"), key=lambda p: -int(p.suffix[1:]))  # oldest first
    assert sink.rotated == len(rotated) >= 3 and all(p.stat().st_size >= 600 for p in rotated)
    frames = [strict_json(line)["frame"] for p in [*rotated, ev] for line in p.read_text().splitlines()]
    assert frames == list(range(20))  # nothing lost or duplicated across files


def test_video_segments_are_complete_files(tmp_path):
    now = [0.0]
    sink = VideoSink(tmp_path / "o.avi", segment_s=1.0, clock=lambda: now[0])
    img = np.zeros((48, 64, 3), np.uint8)
    for i, t in enumerate([0.0, 0.5, 1.0, 1.6, 2.5]):
        now[0] = t
        sink.write(FrameResult(Prediction("cam", 0.5, 0.1, frame=i, time=t), img, np.zeros((4, 4), np.float32)))
    sink.close()
    segments = sorted(tmp_path.glob(f"o-{sink.run}-*-*.avi"))
    assert [p.name[-8:-4] for p in segments] == ["0000", "0001", "0002"] and not (tmp_path / "o.avi").exists()
    assert [int(cv2.VideoCapture(str(p)).get(cv2.CAP_PROP_FRAME_COUNT)) for p in segments] == [2, 2, 1]


def test_sigkill_loses_at_most_the_open_video_segment(art, tmp_path):  # noqa: F811
    write_video(tmp_path / "v.avi", 3000, size=(64, 48))
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
            "onnxruntime",
            "--device",
            "cpu",
            "--save",
            str(tmp_path / "o.avi"),
            "--segment-minutes",
            "0.005",
            "--status-every",
            "999",
        ],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(list(tmp_path.glob("o-*.avi"))) < 4:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.kill()  # SIGKILL: no clean-up at all
        proc.wait()
    segments = sorted(tmp_path.glob("o-*.avi"))
    assert len(segments) >= 4
    for seg in segments[:-1]:  # every closed segment decodes completely
        cap = cv2.VideoCapture(str(seg))
        n = 0
        while cap.read()[0]:
            n += 1
        assert n > 0 and n == int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), seg


def test_every_grabbed_frame_is_accounted_for(art, tmp_path):  # noqa: F811
    """Live sources: frames grabbed = frames inferred + frames dropped, and every inferred frame is
    a record in the events file (the identity the soak script checks over 200,000 frames)."""
    write_video(tmp_path / "v.avi", 100)
    sources = [LiveSource(str(tmp_path / "v.avi"), name=f"cam{i}", backoff=(0.02, 0.1)) for i in range(2)]
    ev = tmp_path / "ev.jsonl"
    summary = Pipeline(
        open_backend(art, "onnxruntime", "fp32", "cpu"),
        sources,
        art.manifest.image_size,
        None,
        [EventsSink(ev)],
        max_frames=40,
        status_every=999,
        log=lambda s: None,
    ).run()
    records = [strict_json(line)["source"] for line in ev.read_text().splitlines()]
    assert summary.frames == len(records) == 40
    for src in sources:
        assert src.grabbed == src.stats.frames + src.stats.dropped
        assert src.stats.frames == records.count(src.name)
