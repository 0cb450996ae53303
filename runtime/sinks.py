"""Where processed frames go: events (JSON Lines), an overlay video, snapshots of anomalous
frames, an OpenCV window (and the web viewer in ``server``).

Every sink implements ``Sink``: it gets the same ``Prediction`` plus the frame (RGB uint8 at its
own size), its anomaly map (float32 [S, S] at model resolution) and the rendered overlay view.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import deque
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from clipad.calibration.constants import Calibration
from clipad.core.errors import ClipadError
from clipad.data.colour import to_bgr
from clipad.runtime.overlay import overlay, put_label
from clipad.runtime.records import FrameResult, Prediction, to_json_line


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
    appending (an earlier run's events are kept) and a lock file beside it (``.<name>.lock``)
    refuses a second run writing the same file in one line. Values that are not finite are written
    as null (strict JSON). With ``max_bytes``, a file that reaches that size is rotated:
    ``events.jsonl`` becomes ``events.jsonl.1`` (``.1`` becomes ``.2``, ...; ``keep`` files kept).
    """

    FSYNC_EVERY_S = 1.0

    def __init__(self, path: str | Path, max_bytes: int = 0, keep: int = 5):
        self.path, self.max_bytes, self.keep = Path(path), max_bytes, keep
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
        except OSError as err:
            self._lock_file.close()
            raise ClipadError(f"cannot write events file {path}: {err.strerror or err}") from None
        self.written = 0
        self.rotated = 0
        self._synced = time.monotonic()

    def write(self, result: FrameResult) -> None:
        pred = result.record
        try:
            self.file.write(to_json_line(pred.event()))
            self.file.flush()
            if time.monotonic() - self._synced >= self.FSYNC_EVERY_S:
                os.fsync(self.file.fileno())
                self._synced = time.monotonic()
            if self.max_bytes and self.file.tell() >= self.max_bytes:
                self._rotate()
        except OSError as err:
            raise SinkError(
                f"events file {self.path}: {err.strerror or err}; stopped after {self.written} events"
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
            os.fsync(self.file.fileno())
        except OSError:
            pass
        for f in (self.file, self._lock_file):
            try:
                f.close()
            except OSError:
                pass


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


class VideoSink:
    """The overlay video (mp4v in .mp4, MJPG in .avi), at the first frame's size.

    A video file is only complete once closed: after SIGKILL, the OOM killer or a power loss the
    open file is usually not decodable. With ``segment_s`` the video is cut into files of that
    many seconds of capture time, ``<stem>-0000<suffix>``, ``<stem>-0001<suffix>``, ..., so such
    a stop loses at most the open segment.
    """

    def __init__(self, path: str | Path, fps: float = 10.0, segment_s: float = 0.0):
        self.path, self.fps, self.segment_s = Path(path), fps, segment_s
        self.writer: cv2.VideoWriter | None = None
        self.segments = 0
        self.size: tuple[int, int] | None = None  # (width, height) of the first frame; every segment keeps it
        self._segment_start = 0.0  # capture time of the open segment's first frame; read only while one is open

    def _target(self) -> Path:
        if not self.segment_s:
            return self.path
        return self.path.with_name(f"{self.path.stem}-{self.segments:04d}{self.path.suffix}")

    def write(self, result: FrameResult) -> None:
        pred, img = result.record, result.view if result.view is not None else result.image
        t = pred.time if pred.time is not None else time.time()
        if self.writer is not None and self.segment_s and t - self._segment_start >= self.segment_s:
            self.writer.release()  # this segment is now a complete file
            self.writer = None
            self.segments += 1
        if self.writer is None:
            target = self._target()
            target.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter.fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            if self.size is None:
                self.size = (img.shape[1], img.shape[0])
            self.writer = cv2.VideoWriter(str(target), fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                raise SinkError(f"cannot write video {target}")
            self._segment_start = t
        if (img.shape[1], img.shape[0]) != self.size:
            img = cv2.resize(img, self.size)
        self.writer.write(to_bgr(img))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class SnapshotSink:
    """For anomalous frames (never without calibration): original, overlay, raw map, mask.

    Files are named ``<stem>_<source tag>_<frame>``, the tag a short hash of the full source name,
    so two sources with the same file stem never overwrite each other. At most one snapshot per
    source every ``interval`` seconds of capture time (0: every anomalous frame). A failed write
    (full disk, ...) is counted and reported in ``notes``; the run goes on, since the events file
    remains the record of every frame.
    """

    def __init__(self, folder: str | Path, calibration: Calibration | None = None, interval: float = 0.0):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ClipadError(f"cannot create snapshot folder {folder}: {err.strerror or err}") from None
        self.cal, self.interval = calibration, interval
        self.written = self.failed = self.skipped = 0
        self.notes: deque[str] = deque(maxlen=100)
        self._last: dict[str, float] = {}

    @staticmethod
    def stem(pred: Prediction) -> str:
        tag = hashlib.sha1(pred.source.encode()).hexdigest()[:8]
        return f"{Path(pred.source).stem}_{tag}_{pred.frame or 0:06d}"

    def write(self, result: FrameResult) -> None:
        pred, frame, amap, view = result.record, result.image, result.amap, result.view
        if not pred.anomalous:
            return
        t = pred.time or 0.0
        last = self._last.get(pred.source)
        if last is not None and self.interval > 0 and t - last < self.interval:
            self.skipped += 1
            return
        self._last[pred.source] = t
        stem = self.stem(pred)
        try:
            ok = cv2.imwrite(str(self.folder / f"{stem}_frame.png"), to_bgr(frame))
            if view is not None:
                ok &= cv2.imwrite(str(self.folder / f"{stem}_overlay.png"), to_bgr(view))
            np.save(self.folder / f"{stem}_map.npy", amap.astype(np.float32))
            if self.cal is not None:  # at model resolution
                ok &= cv2.imwrite(str(self.folder / f"{stem}_mask.png"), self.cal.mask_image(amap))
            if not ok:
                raise OSError("OpenCV could not write the image")
        except (OSError, cv2.error) as err:
            self.failed += 1
            if self.failed == 1 or self.failed % 100 == 0:
                self.notes.append(
                    f"snapshot {stem} not written ({getattr(err, 'strerror', None) or err}); "
                    f"{self.failed} failed so far, the run goes on"
                )
            return
        self.written += 1

    def close(self) -> None:
        pass


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
