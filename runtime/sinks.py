"""Where processed frames go: events (JSON Lines), an overlay video, snapshots of anomalous
frames, an OpenCV window (and the web viewer in ``server``).

Every sink implements ``Sink``: it gets the same ``Prediction`` plus the frame (RGB uint8 at its
own size), its anomaly map (float32 [S, S] at model resolution) and the rendered overlay view.
"""

from __future__ import annotations

import io
import os
import stat
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from clipad.calibration.constants import Calibration
from clipad.core.errors import ClipadError
from clipad.data.colour import to_bgr
from clipad.runtime.overlay import overlay, put_label
from clipad.runtime.records import FrameResult, Prediction, to_json_line
from clipad.runtime.retention import NO_LIMITS, Limits, Retention
from clipad.runtime.runfiles import (
    create_new,
    new_run_id,
    snapshot_pattern,
    snapshot_stem,
    variant,
    video_name,
    video_pattern,
)

Clock = Callable[[], float]  # seconds of a monotonic clock: intervals and segment lengths, never labels


class Sink(Protocol):
    """A consumer of processed frames; ``close`` releases its files or windows."""

    def write(self, result: FrameResult) -> None:
        """One frame (``records.FrameResult``): its record, the image, its map and, when any sink needs
        it, the overlay."""

    def close(self) -> None: ...


class SinkError(ClipadError):
    """A sink cannot write any more (full or read-only disk); the run stops cleanly."""


class EventsSink:
    """One JSON object per processed frame (the events contract), appended to the file.

    Guarantees: every record is flushed to the operating system at once, so a crash or SIGKILL of
    clipad loses at most the frame in flight; the file is fsynced at most once a second and at
    close, so a power loss loses at most the last second of records. The file is opened for
    appending (an earlier run's events are kept); when it does not end with a newline (an earlier
    run stopped mid-record on a full disk) this run starts on a new line and says so once. A lock
    file beside the real file (``.<name>.lock``, symlinks resolved) refuses a second run writing
    the same file in one line. Each record starts with ``run``, the run id that also names this
    run's snapshots and video files. Values that are not finite are written as null (strict JSON).
    With ``max_bytes``, a file that reaches that size is rotated: ``events.jsonl`` becomes
    ``events.jsonl.1`` (``.1`` becomes ``.2``, ...; ``keep`` files kept). A FIFO or other file that
    is not a regular file (a log shipper's pipe) is written without fsync and never rotated.
    """

    FSYNC_EVERY_S = 1.0

    def __init__(self, path: str | Path, max_bytes: int = 0, keep: int = 5, run: str | None = None):
        self.shown, self.path = Path(path), Path(os.path.realpath(path))  # the lock and rotation act on the real file
        self.max_bytes, self.keep, self.run = max_bytes, keep, run or new_run_id()
        self.notes: deque[str] = deque(maxlen=100)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.path.parent / f".{self.path.name}.lock", "a")
        except OSError as err:
            raise ClipadError(f"cannot write events file {path}: {err.strerror or err}") from None
        if not _lock(self._lock_file):
            self._lock_file.close()
            raise ClipadError(
                f"events file {path} is being written by another clipad run; give each run its own --events"
            )
        try:
            self.file = open(self.path, "a", encoding="utf-8")
            self.regular = stat.S_ISREG(os.fstat(self.file.fileno()).st_mode)
            if self.regular and _torn(self.path):
                self.file.write("\n")
                self.notes.append(
                    f"events file {path} ended in a torn line (an earlier run stopped mid-record); "
                    "it is kept as it is and this run starts on a new line"
                )
        except OSError as err:
            self._lock_file.close()
            raise ClipadError(f"cannot write events file {path}: {err.strerror or err}") from None
        if not self.regular:
            self.max_bytes = 0
        self.written = 0
        self.rotated = 0
        self._synced = time.monotonic()

    def write(self, result: FrameResult) -> None:
        self.write_record(result.record.event())

    def write_record(self, record: dict[str, Any]) -> None:
        """One JSON object as one line, after ``run`` (the frame loop's events; the station's job
        results), with the guarantees above; SinkError when the file cannot take it."""
        try:
            self.file.write(to_json_line({"run": self.run, **record}))
            self.file.flush()
            if self.regular and time.monotonic() - self._synced >= self.FSYNC_EVERY_S:
                os.fsync(self.file.fileno())
                self._synced = time.monotonic()
            if self.max_bytes and self.file.tell() >= self.max_bytes:
                self._rotate()
        except OSError as err:
            raise SinkError(
                f"events file {self.shown}: {err.strerror or err}; stopped after {self.written} events"
            ) from None
        self.written += 1

    def _rotate(self) -> None:
        """events.jsonl -> .1 -> .2 ... (the oldest beyond ``keep`` is dropped); a fresh file follows."""
        os.fsync(self.file.fileno())
        self.file.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.file = open(self.path, "a", encoding="utf-8")
        self.rotated += 1

    def close(self) -> None:
        try:
            self.file.flush()
            if self.regular:
                os.fsync(self.file.fileno())
        except OSError:
            pass
        for f in (self.file, self._lock_file):
            try:
                f.close()
            except OSError:
                pass


def _torn(path: Path) -> bool:
    """Whether the regular file ``path`` is not empty and does not end with a newline."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def _lock(file) -> bool:
    """An exclusive, non-blocking advisory lock on an open file; False when another process holds
    it. Where locks are not supported (no fcntl, some network file systems) the file is used unlocked."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


@dataclass
class _Video:
    """One source's open overlay video: its frame size (width, height) is the source's first frame's."""

    size: tuple[int, int]
    fps: float
    segment: int = 0
    writer: cv2.VideoWriter | None = None
    file: Path | None = None
    start: float = 0.0  # monotonic time of the open file's first frame


class VideoSink:
    """The overlay video (mp4v in .mp4, MJPG in .avi), one per source, each at its first frame's size
    and at the source's own frame rate where it delivers every frame (a video file), else ``fps``.

    Files are named ``<stem>-<run id>-<source tag><suffix>`` beside ``path``, so a restarted run or a
    second source never truncates another's video. A video file is only complete once closed: after
    SIGKILL, the OOM killer or a power loss the open file is usually not decodable. With
    ``segment_s`` each source's video is cut into files of that many seconds (monotonic time, so a
    wall-clock step never stops the cutting), ``...-0000<suffix>``, ``...-0001<suffix>``, ..., so
    such a stop loses at most the open segment. ``retention`` limits the folder's video files of
    this ``path`` (any run's), checked as segments close.
    """

    def __init__(
        self,
        path: str | Path,
        fps: float = 10.0,
        segment_s: float = 0.0,
        run: str | None = None,
        retention: Limits = NO_LIMITS,
        clock: Clock = time.monotonic,
    ):
        self.path, self.fps, self.segment_s = Path(path), fps, segment_s
        self.run, self.clock = run or new_run_id(), clock
        self.videos: dict[str, _Video] = {}
        self.files: list[Path] = []  # every file this sink created, in order
        self.notes: deque[str] = deque(maxlen=100)
        self.retention = Retention(self.path.parent, video_pattern(self.path), retention, "video", self.notes)

    def _open(self, source: str, video: _Video) -> None:
        base = video_name(self.path, self.run, source, video.segment if self.segment_s else None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        video.file = create_new(lambda n: base.with_name(variant(base.stem, n) + base.suffix))
        self.files.append(video.file)
        fourcc = cv2.VideoWriter.fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
        video.writer = cv2.VideoWriter(str(video.file), fourcc, video.fps, video.size)
        if not video.writer.isOpened():
            raise SinkError(f"cannot write video {video.file}")
        video.start = self.clock()

    def _finish(self, video: _Video) -> None:
        """Close the open file of ``video``: it is complete now, and counts for retention."""
        if video.writer is not None and video.file is not None:
            video.writer.release()
            video.writer = None
            self.retention.add(video.file)

    def write(self, result: FrameResult) -> None:
        img, source = result.view if result.view is not None else result.image, result.record.source
        video = self.videos.setdefault(source, _Video((img.shape[1], img.shape[0]), result.fps or self.fps))
        if video.writer is not None and self.segment_s and self.clock() - video.start >= self.segment_s:
            self._finish(video)
            video.segment += 1
        if video.writer is None:
            try:
                self._open(source, video)
            except OSError as err:
                raise SinkError(f"cannot write video beside {self.path}: {err.strerror or err}") from None
        self.retention.prune()
        if (img.shape[1], img.shape[0]) != video.size:
            img = cv2.resize(img, video.size)
        assert video.writer is not None
        video.writer.write(to_bgr(img))

    def close(self) -> None:
        for video in self.videos.values():
            self._finish(video)
        self.retention.prune()
        self.retention.note()


class SnapshotSink:
    """For anomalous frames (never without calibration): original, overlay, raw map, mask.

    Files are named ``<stem>_<source tag>_<run id>_<frame>_<kind>`` (``runfiles.snapshot_stem``),
    the tag a short hash of the full source name, so two sources with the same file stem never
    overwrite each other, and the run id that each event carries, so a restarted run (its frame
    indices start at 0 again) never overwrites an earlier run's snapshots. Every file is created
    exclusively. At most one snapshot per source every ``interval`` seconds (monotonic time: a
    wall-clock step never stops them; 0: every anomalous frame). A failed write (full disk, ...)
    is counted and reported in ``notes``, and its partial files removed; the run goes on, since
    the events file remains the record of every frame. ``retention`` limits the folder's snapshot
    files (any run's).
    """

    def __init__(
        self,
        folder: str | Path,
        calibration: Calibration | None = None,
        interval: float = 0.0,
        run: str | None = None,
        retention: Limits = NO_LIMITS,
        clock: Clock = time.monotonic,
    ):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ClipadError(f"cannot create snapshot folder {folder}: {err.strerror or err}") from None
        self.cal, self.interval, self.run, self.clock = calibration, interval, run or new_run_id(), clock
        self.written = self.failed = self.skipped = 0
        self.notes: deque[str] = deque(maxlen=100)
        self.retention = Retention(self.folder, snapshot_pattern(), retention, "snapshots", self.notes)
        self._last: dict[str, float] = {}

    def _encode(self, result: FrameResult) -> list[tuple[str, bytes]]:
        """(kind, file bytes) of one snapshot; the mask at model resolution."""
        images = [("frame.png", result.image)]
        if result.view is not None:
            images.append(("overlay.png", result.view))
        parts = []
        for kind, img in images:
            ok, buf = cv2.imencode(".png", to_bgr(img))
            if not ok:
                raise OSError("OpenCV could not encode the image")
            parts.append((kind, buf.tobytes()))
        raw = io.BytesIO()
        np.save(raw, result.amap.astype(np.float32))
        parts.append(("map.npy", raw.getvalue()))
        if self.cal is not None:
            ok, buf = cv2.imencode(".png", self.cal.mask_image(result.amap))
            if not ok:
                raise OSError("OpenCV could not encode the mask")
            parts.append(("mask.png", buf.tobytes()))
        return parts

    def write(self, result: FrameResult) -> None:
        pred = result.record
        self.retention.prune()
        if not pred.anomalous:
            return
        now, last = self.clock(), self._last.get(pred.source)
        if last is not None and self.interval > 0 and now - last < self.interval:
            self.skipped += 1
            return
        self._last[pred.source] = now
        stem = snapshot_stem(pred.source, self.run, pred.frame or 0)
        files: list[Path] = []
        try:
            (kind, data), *rest = self._encode(result)
            files.append(create_new(lambda n: self.folder / f"{variant(stem, n)}_{kind}", lambda f: f.write(data)))
            taken = files[0].name[: -len(kind) - 1]
            for other, content in rest:
                path = self.folder / f"{taken}_{other}"
                with open(path, "xb") as f:  # never an existing file, and only created files are cleaned up
                    files.append(path)
                    f.write(content)
        except (OSError, cv2.error) as err:
            for p in files:  # nothing half-written
                p.unlink(missing_ok=True)
            self.failed += 1
            if self.failed == 1 or self.failed % 100 == 0:
                self.notes.append(
                    f"snapshot {stem} not written ({getattr(err, 'strerror', None) or err}); "
                    f"{self.failed} failed so far, the run goes on"
                )
            return
        for p in files:
            self.retention.add(p)
        self.written += 1

    def close(self) -> None:
        self.retention.prune()
        self.retention.note()


def render_view(
    frame: np.ndarray, amap: np.ndarray, pred: Prediction, lo: float, hi: float, fps: float | None = None
) -> np.ndarray:
    """The overlay frame with its score line (shared by the video, snapshots and viewers)."""
    if pred.label == "error":
        text = f"no score: {pred.error}"
    elif pred.score is not None:
        text = f"score {pred.score:.3f} {pred.label}"
    else:
        text = f"p {pred.image_prob:.3f} max {pred.map_max:.3g} (uncalibrated)"
    if fps is not None:
        text += f"  {fps:.1f} fps"
    return put_label(overlay(frame, amap, lo, hi), text)


class ShowSink:
    """An OpenCV window with the overlay, score and fps (needs a GUI build of OpenCV and a display)."""

    WINDOW = "clipad"

    def __init__(self):
        import os
        import sys

        hint = "use --serve 127.0.0.1:8080 and a browser instead"
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise ClipadError(f"--show needs a display (DISPLAY is not set); {hint}")
        try:
            cv2.namedWindow(self.WINDOW, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise ClipadError(
                f"--show needs OpenCV with GUI support (this install has opencv-python-headless); {hint}"
            ) from None

    def write(self, result: FrameResult) -> None:
        cv2.imshow(self.WINDOW, to_bgr(result.view if result.view is not None else result.image))
        cv2.waitKey(1)

    def close(self) -> None:
        cv2.destroyAllWindows()
