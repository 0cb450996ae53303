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
from tests.helpers import FillsUp, run, write_video

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


def test_one_video_per_source(tmp_path):
    """Frames of two sources alternate in the run; each source gets its own video at its own size."""
    sink = VideoSink(tmp_path / "o.avi")
    for i in range(6):
        source, size = ("cam1", (48, 64)) if i % 2 else ("cam2", (32, 40))
        sink.write(FrameResult(Prediction(source, 0.5, 0.1, frame=i), np.zeros((*size, 3), np.uint8), AMAP))
    sink.close()
    videos = {p.name: cv2.VideoCapture(str(p)) for p in tmp_path.glob("o-*.avi")}
    shapes = sorted(
        (int(c.get(cv2.CAP_PROP_FRAME_WIDTH)), int(c.get(cv2.CAP_PROP_FRAME_COUNT))) for c in videos.values()
    )
    assert shapes == [(40, 3), (64, 3)], videos


def test_a_video_files_overlay_keeps_its_frame_rate(art, tmp_path, capsys):
    """A video file's overlay plays at the file's own rate; an image folder's at the default 10 fps."""
    write_video(tmp_path / "v.avi", 6, size=(64, 48), fps=25)
    (tmp_path / "imgs").mkdir()
    for i, im in enumerate(sample_images(2, width=64, height=48)):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), im)
    run_video(art.root, tmp_path / "v.avi", capsys, "--source", tmp_path / "imgs", "--save", tmp_path / "out" / "o.avi")
    rates = sorted(cv2.VideoCapture(str(p)).get(cv2.CAP_PROP_FPS) for p in (tmp_path / "out").glob("o-*.avi"))
    assert rates == [10.0, 10.0, 25.0], rates  # an image's source is its file: one video per image


def age(paths, hours: float) -> None:
    """Set the modification time of ``paths`` ``hours`` back."""
    t = time.time() - hours * 3600
    for p in paths:
        os.utime(p, (t, t))


def test_video_retention_removes_the_oldest_files_of_this_tool_only(art, tmp_path, capsys):
    video, out = tmp_path / "v.avi", tmp_path / "out"
    write_video(video, 8, size=(64, 48))
    save = ("--save", out / "o.avi", "--segment-minutes", 1)
    runs: list[set[Path]] = []

    def again(*extra) -> str:
        before = set(out.glob("*"))
        err = run_video(art.root, video, capsys, *save, *extra)
        runs.append(set(out.glob("o-*.avi")) - before)
        return err

    again()
    again()
    users = [out / "o-notes.avi", out / "o-0000.avi", out / "notes.txt"]  # near misses of the naming pattern
    for p in users:
        p.write_bytes(b"x" * 2**20)
    age(runs[0] | set(users), 3)
    age(runs[1], 1)
    err = again("--segments-max-age-h", 2)
    assert not any(p.exists() for p in runs[0]) and all(p.exists() for p in runs[1] | runs[2] | set(users))
    assert "video: retention removed 1 files" in err, err
    one_run = sum(p.stat().st_size for p in runs[2])
    err = again("--segments-max-mb", 1.5 * one_run / 2**20)  # room for one run's video, not two
    assert set(out.glob("o-*.avi")) == runs[3] | {users[0], users[1]}, sorted(p.name for p in out.iterdir())
    assert all(p.exists() for p in users) and "video: retention removed 2 files" in err, err


def test_snapshot_retention_keeps_the_newest_within_the_quota(tmp_path):
    from clipad.runtime.retention import Limits

    folder = tmp_path / "s"
    folder.mkdir()
    users = [folder / "notes.txt", folder / "part_map.npy"]
    for p in users:
        p.write_bytes(b"x" * 4096)
    age(users, 100)
    probe = SnapshotSink(tmp_path / "probe")
    probe.write(FrameResult(anomalous("cam", 0, 0.0), FRAME, AMAP))
    one = sum(p.stat().st_size for p in (tmp_path / "probe").iterdir())
    sink = SnapshotSink(folder, retention=Limits(max_bytes=int(2.5 * one)))
    for i in range(5):
        sink.write(FrameResult(anomalous("cam", i, float(i)), FRAME, AMAP))
    sink.close()
    kept = sorted(p.name for p in folder.glob("cam_*"))
    assert [name.split("_")[3] for name in kept] == ["000003", "000003", "000004", "000004"], kept
    assert all(p.exists() for p in users) and sink.retention.removed == 6
    assert any("snapshots: retention removed 6 files" in n for n in sink.notes), list(sink.notes)


def test_a_snapshot_that_meets_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    """The disk fills up in the middle of a snapshot: counted, said once, no half-written file left."""
    import builtins

    from clipad.runtime import runfiles

    def full_open(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return FillsUp(f) if "x" in mode else f  # the sink creates its files exclusively

    monkeypatch.setattr(runfiles, "open", full_open, raising=False)
    sink = SnapshotSink(tmp_path / "s")
    sink.write(FrameResult(anomalous("cam", 0, 0.0), FRAME, AMAP))
    sink.close()
    assert (sink.failed, sink.written) == (1, 0)
    assert [p.name for p in (tmp_path / "s").glob("cam*")] == []
    assert any("No space left on device" in n for n in sink.notes), list(sink.notes)
