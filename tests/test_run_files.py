"""The files a run writes, across restarts, clock steps and disks that fill: names that are unique per
run (a restarted run never truncates or overwrites an earlier run's video or snapshots, and its events
name the run), the events file after a torn last line, on a FIFO and through a symlink, intervals that
follow the monotonic clock, and retention of snapshots and video segments. Real files, real runs."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from clipad.core.errors import ClipadError
from clipad.data.synth import sample_images
from clipad.runtime.records import FrameResult, Prediction
from clipad.runtime.sinks import EventsSink, SnapshotSink, VideoSink
from tests.helpers import run, write_video

FRAME, AMAP = np.zeros((48, 64, 3), np.uint8), np.zeros((4, 4), np.float32)


def run_video(art, video: Path, capsys, *extra) -> str:
    """`clipad run` on ``video`` with the ONNX Runtime CPU backend; returns its stderr."""
    code, _, err = run(
        capsys, "run", "--source", video, "--artifacts", art, "--backend", "onnxruntime", "--status-every", 999, *extra
    )
    assert code == 0, err
    return err


def anomalous(source: str, frame: int, t: float) -> Prediction:
    return Prediction(source, 0.9, 1.0, 1.5, 0.9, "anomalous", 0.1, frame=frame, time=t)


def fingerprint(p: Path) -> tuple[int, int, bytes]:
    st = p.stat()
    return st.st_ino, st.st_mtime_ns, p.read_bytes()


def test_a_restarted_run_keeps_the_earlier_runs_video_segments(art, tmp_path, capsys):
    write_video(tmp_path / "v.avi", 8, size=(64, 48))
    save = ("--save", tmp_path / "o.avi", "--segment-minutes", 1)
    run_video(art.root, tmp_path / "v.avi", capsys, *save)
    first = {p: fingerprint(p) for p in tmp_path.glob("o-*.avi")}
    assert first
    run_video(art.root, tmp_path / "v.avi", capsys, *save)  # the restart
    now = set(tmp_path.glob("o-*.avi"))
    assert set(first) < now, sorted(p.name for p in now)  # the second run wrote files of its own ...
    assert all(fingerprint(p) == f for p, f in first.items())  # ... and left the first run's untouched
    for p in now:
        assert int(cv2.VideoCapture(str(p)).get(cv2.CAP_PROP_FRAME_COUNT)) == 8, p


@pytest.fixture(scope="module")
def calibrated(art, tmp_path_factory):
    """``art`` calibrated on 8 synthetic good parts at a 50% false-positive rate: about half of such
    frames are anomalous, so every run below takes snapshots."""
    from clipad import cli

    root = tmp_path_factory.mktemp("files")
    shutil.copytree(art.root, root / "art")
    (root / "good").mkdir()
    for i, im in enumerate(sample_images(8, width=64, height=48, seed=7)):
        cv2.imwrite(str(root / "good" / f"{i:03d}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    args = ["calibrate", "--artifacts", root / "art", "--good", root / "good", "--target-fpr", "0.5", "--quiet"]
    assert cli.run([str(a) for a in args]) == 0
    return root / "art"


def test_snapshots_of_a_restarted_run_never_overwrite_and_events_link_to_them(calibrated, tmp_path, capsys):
    snaps, ev, video = tmp_path / "snaps", tmp_path / "ev.jsonl", tmp_path / "v.avi"
    sizes = ((64, 48), (80, 64))  # the same source name, other frames: frame indices restart at 0
    for size in sizes:
        write_video(video, 6, size=size)
        run_video(calibrated, video, capsys, "--events", ev, "--snapshots", snaps, "--snapshot-interval", 0)
    events = [json.loads(line) for line in ev.read_text().splitlines()]
    hits = [e for e in events if e["label"] == "anomalous"]
    assert len(events) == 12
    assert len(list(snaps.glob("*_map.npy"))) == len(hits) > 0  # one snapshot per anomalous frame of both runs
    from clipad.runtime.runfiles import snapshot_stem

    runs = [events[0]["run"], events[6]["run"]]
    assert runs[0] != runs[1] and all(e["run"] == runs[i // 6] for i, e in enumerate(events))
    for e in hits:  # each event names the files of its own run, holding its own frame
        image = cv2.imread(str(snaps / f"{snapshot_stem(e['source'], e['run'], e['frame'])}_frame.png"))
        assert image is not None and image.shape[1::-1] == sizes[runs.index(e["run"])], e


def test_the_next_run_starts_after_a_torn_last_line(tmp_path):
    ev = tmp_path / "ev.jsonl"
    ev.write_text('{"frame": 0, "source": "a"}\n{"frame": 1, "sou')  # a disk-full stop mid-record
    sink = EventsSink(ev)
    sink.write(FrameResult(Prediction("b", 0.5, 0.1, frame=0), FRAME, AMAP))
    sink.close()
    lines = ev.read_text().splitlines()
    assert lines[1] == '{"frame": 1, "sou'  # the torn line is kept as it was
    assert len(lines) == 3 and json.loads(lines[2])["source"] == "b"  # the new record is a line of its own
    assert any("torn" in note for note in getattr(sink, "notes", ())), "the torn line is reported"


def test_intervals_follow_the_monotonic_clock_when_the_wall_clock_steps_back(tmp_path, monkeypatch):
    """An NTP step of one hour back in the middle of a run: snapshots keep coming and segments are
    still cut (time.time steps back in this process; time.monotonic runs on)."""
    wall = time.time
    step = {"back": 0.0}
    monkeypatch.setattr(time, "time", lambda: wall() - step["back"])
    snaps = SnapshotSink(tmp_path / "s", interval=0.05)
    video = VideoSink(tmp_path / "o.avi", segment_s=0.12)
    for i in range(12):
        if i == 4:
            step["back"] = 3600.0
        result = FrameResult(anomalous("cam", i, time.time()), FRAME, AMAP)
        snaps.write(result)
        video.write(result)
        time.sleep(0.06)
    video.close()
    assert snaps.written >= 10, (snaps.written, snaps.skipped)  # every frame is >= 0.05 s after the one before
    segments = sorted(tmp_path.glob("o-*.avi"))
    assert len(segments) >= 4, [p.name for p in segments]  # 12 frames 0.06 s apart, cut every 0.12 s


def test_events_on_a_fifo(tmp_path, monkeypatch):
    """A FIFO (a log shipper reading): no fsync (EINVAL on a pipe), every record arrives."""
    fifo = tmp_path / "ev.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    monkeypatch.setattr(EventsSink, "FSYNC_EVERY_S", 0.0)  # an fsync is due at every record
    sink = EventsSink(fifo, max_bytes=100)  # and rotation is meaningless on a pipe
    for i in range(3):
        sink.write(FrameResult(Prediction("cam", 0.5, 0.1, frame=i), FRAME, AMAP))
    sink.close()
    reader.join(10)
    assert [json.loads(line)["frame"] for line in got[0].decode().splitlines()] == [0, 1, 2]


def test_the_events_lock_holds_through_a_symlink(tmp_path):
    real = tmp_path / "data" / "ev.jsonl"
    real.parent.mkdir()
    (tmp_path / "ev-link.jsonl").symlink_to(real)
    first = EventsSink(real)
    try:
        with pytest.raises(ClipadError, match="being written by another clipad run"):
            EventsSink(tmp_path / "ev-link.jsonl").close()
    finally:
        first.close()
