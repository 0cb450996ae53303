"""The pipeline under stops and uneven load: a stalled sink, a backend outage, every camera
down, more cameras than the batch holds, and frame indices of videos with bad frames."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from clipad.runtime.backends import BackendUnavailable, open_backend
from clipad.runtime.pipeline import Pipeline
from clipad.runtime.sinks import EventsSink
from clipad.runtime.sources import LiveSource, VideoFileSource
from tests.helpers import onnx_pipeline, run_in_thread, write_video

REPO = Path(__file__).resolve().parents[1]


def test_a_stalled_sink_does_not_keep_sigterm_from_stopping_the_run(art, tmp_path):  # noqa: F811
    """The events file is a FIFO whose reader never reads (a share that stops taking writes): the
    sink blocks in write(2). SIGTERM still ends the run within a bound, names the stalled sink in
    one line with exit 1, and the overlay video is finalised."""
    write_video(tmp_path / "v.avi", 3000, size=(64, 48))
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # held open, never read
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)  # the smallest pipe: full after a dozen records
    video = tmp_path / "o.avi"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipad", "run", "--source", str(tmp_path / "v.avi"), "--artifacts", str(art.root)]
        + ["--backend", "onnxruntime", "--device", "cpu", "--events", str(fifo), "--save", str(video)]
        + ["--status-every", "999"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob("o-*.avi")):
            time.sleep(0.05)
        time.sleep(1.5)  # the pipe is full and the sink blocked by now
        assert proc.poll() is None, "the run ended before the signal could be sent"
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError("SIGTERM did not stop the run within 30 s (a stalled sink hangs it)") from None
        took = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(reader)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 1 and lines[-1].startswith("error: ") and "EventsSink" in lines[-1], err
    assert "did not finish" in lines[-1] and "Traceback" not in err, err
    assert took < 15, took
    (made,) = tmp_path.glob("o-*.avi")  # <stem>-<run>-<source>.avi (runtime/runfiles.py)
    cap = cv2.VideoCapture(str(made))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n > 0 and n == int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), (n, err)


class DownBackend:
    """A real backend behind a server that is down: every call raises ``BackendUnavailable``."""

    def __init__(self, inner):
        self.inner, self.max_batch, self.calls = inner, inner.max_batch, 0

    def __call__(self, images):
        self.calls += 1
        raise BackendUnavailable("server at 127.0.0.1:9 is down")

    def close(self):
        self.inner.close()


def test_sigterm_during_a_backend_outage_is_a_clean_stop(art, tmp_path):  # noqa: F811
    """SIGTERM (a real signal to this process) arrives while the backend is down and retried:
    the run stops as stopped, not as a backend failure."""
    write_video(tmp_path / "v.avi", 400, size=(64, 48))
    backend = DownBackend(open_backend(art, "onnxruntime", "fp32", "cpu"))
    pipe = Pipeline(
        backend, [VideoFileSource(str(tmp_path / "v.avi"))], art.geometry, None, [], status_every=999, log=print
    )
    timer = threading.Timer(0.7, os.kill, (os.getpid(), signal.SIGTERM))  # during the retries' waits
    timer.start()
    try:
        summary = pipe.run()
    finally:
        timer.cancel()
    assert backend.calls >= 1 and summary.stopped_by == "SIGTERM", summary
    assert summary.error is None, summary.error
    assert summary.errors == summary.frames  # the frames of the batches without outputs are error records


def test_a_status_line_is_printed_while_every_camera_is_down(art, tmp_path):  # noqa: F811
    """A stream that delivers a few frames and then cannot be reopened (the file is gone): status
    lines go on, saying every source is down."""
    write_video(tmp_path / "v.avi", 3, size=(64, 48))
    cam = LiveSource(str(tmp_path / "v.avi"), name="cam", backoff=(0.05, 0.2))
    (tmp_path / "v.avi").unlink()  # the grabber holds the open capture; every reopen fails
    log: list[str] = []
    pipe = onnx_pipeline(art, [cam], status_every=0.3, log=log.append)
    threading.Timer(2.5, pipe.stop.set).start()
    summary = run_in_thread(pipe.run)["result"]
    status = [ln for ln in log if "fps" in ln]
    assert len(status) >= 3 and "all sources down" in status[-1], log
    assert summary.error is None


def test_live_sources_beyond_the_batch_are_inspected_fairly(art, tmp_path):  # noqa: F811
    """Six cameras, batches of 4: every camera's share of the inspected frames is within 20% of
    equal, and the per-source figures are in the summary and its line."""
    write_video(tmp_path / "v.avi", 300, size=(64, 48))
    cams = [LiveSource(str(tmp_path / "v.avi"), name=f"cam{i}", backoff=(0.02, 0.1)) for i in range(6)]
    assert art.manifest.max_batch == 4
    pipe = onnx_pipeline(art, cams, max_frames=240)
    summary = run_in_thread(pipe.run, timeout=60)["result"]
    inspected = {c.name: c.stats.frames for c in cams}
    assert sum(inspected.values()) == summary.frames == 240
    for name, n in inspected.items():
        assert abs(n / 240 - 1 / 6) <= 0.2 / 6, inspected
        figures = summary.sources[name]
        assert (figures.inspected, figures.dropped) == (n, cams[int(name[3:])].stats.dropped)
        assert f"{name} {n}/" in summary.line()


class ClockStepBackend:
    """A real backend during whose call the wall clock is stepped back an hour (an NTP step):
    the frames of that batch were captured before the step and are scored after it."""

    def __init__(self, inner, monkeypatch):
        self.inner, self.max_batch, self.monkeypatch, self.calls = inner, inner.max_batch, monkeypatch, 0

    def __call__(self, images):
        self.calls += 1
        if self.calls == 3:
            real = time.time
            self.monkeypatch.setattr(time, "time", lambda: real() - 3600.0)
        return self.inner(images)


def test_a_wall_clock_step_never_makes_latencies_negative(art, tmp_path, monkeypatch):  # noqa: F811
    write_video(tmp_path / "v.avi", 40, size=(64, 48))
    backend = ClockStepBackend(open_backend(art, "onnxruntime", "fp32", "cpu"), monkeypatch)
    ev = tmp_path / "ev.jsonl"
    pipe = Pipeline(
        backend, [VideoFileSource(str(tmp_path / "v.avi"))], art.manifest.image_size, None, [EventsSink(ev)], log=print
    )
    summary = run_in_thread(pipe.run)["result"]
    latencies = [json.loads(line)["latency_ms"] for line in ev.read_text().splitlines()]
    assert summary.frames == len(latencies) == 40 and backend.calls > 3
    assert min(latencies) >= 0 and max(latencies) < 60_000, sorted(latencies)[:5]


class SlowCapture:
    """A camera whose every read takes 2 s (a stream at its read timeout), then gives a frame."""

    def read(self):
        time.sleep(2.0)
        return True, np.zeros((48, 64, 3), np.uint8)

    def release(self):
        pass


class SlowLiveSource(LiveSource):
    def _open(self):
        self.connected = True
        return SlowCapture()


def test_stopping_waits_for_the_cameras_together_not_in_turn(art):  # noqa: F811
    """Six cameras in 2 s reads: a stop waits for the reads in progress once, not once per camera."""
    cams = [SlowLiveSource(f"rtsp://127.0.0.1:9/{i}", name=f"slow{i}") for i in range(6)]
    pipe = onnx_pipeline(art, cams)
    stopped: dict[str, float] = {}

    def stop() -> None:
        stopped["at"] = time.monotonic()
        pipe.stop.set()

    threading.Timer(3.0, stop).start()
    run_in_thread(pipe.run, timeout=60)
    assert time.monotonic() - stopped["at"] < 3.5
