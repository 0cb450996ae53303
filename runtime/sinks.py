"""Where processed frames go: events (JSON Lines), an overlay video, snapshots of anomalous
frames, an OpenCV window (and the web viewer in ``server``).

Every sink implements ``Sink``: it gets the same ``Prediction`` plus the frame (RGB uint8 at its
own size), its anomaly map (float32 [S, S] at model resolution) and the rendered overlay view.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from clipad.calibration.constants import Calibration
from clipad.core.errors import ClipadError
from clipad.data.colour import to_bgr
from clipad.runtime.overlay import overlay, put_label
from clipad.runtime.records import Prediction


class Sink(Protocol):
    """A consumer of processed frames; ``close`` releases its files or windows."""

    def write(self, pred: Prediction, frame: np.ndarray, amap: np.ndarray, view: np.ndarray | None) -> None:
        """pred: the frame's record; frame: RGB uint8 [H, W, 3]; amap: float32 [S, S]; view: the
        overlay RGB uint8 [H, W, 3] when any sink needs it, else None."""

    def close(self) -> None: ...


class SinkError(ClipadError):
    """A sink cannot write any more (full or read-only disk); the run stops cleanly."""


class EventsSink:
    """One JSON object per processed frame, flushed at once: a crash loses at most the frame in flight."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "w", encoding="utf-8")
        except OSError as err:
            raise ClipadError(f"cannot write events file {path}: {err.strerror or err}") from None
        self.written = 0

    def write(self, pred: Prediction, frame: np.ndarray, amap: np.ndarray, view: np.ndarray | None) -> None:
        try:
            self.file.write(json.dumps(pred.event()) + "\n")
            self.file.flush()
        except OSError as err:
            raise SinkError(f"events file {self.path}: {err.strerror or err}; stopped after {self.written} events") from None
        self.written += 1

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass


class VideoSink:
    """The overlay video (mp4v in .mp4, MJPG in .avi), at the first frame's size."""

    def __init__(self, path: str | Path, fps: float = 10.0):
        self.path, self.fps, self.writer = Path(path), fps, None

    def write(self, pred: Prediction, frame: np.ndarray, amap: np.ndarray, view: np.ndarray | None) -> None:
        img = view if view is not None else frame
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            self.size = (img.shape[1], img.shape[0])
            self.writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, self.size)
            if not self.writer.isOpened():
                raise SinkError(f"cannot write video {self.path}")
        if (img.shape[1], img.shape[0]) != self.size:
            img = cv2.resize(img, self.size)
        self.writer.write(to_bgr(img))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


class SnapshotSink:
    """For anomalous frames (label, or without calibration never): original, overlay, raw map, mask."""

    def __init__(self, folder: str | Path, calibration: Calibration | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.cal = calibration

    def write(self, pred: Prediction, frame: np.ndarray, amap: np.ndarray, view: np.ndarray | None) -> None:
        if not pred.anomalous:
            return
        stem = f"{Path(pred.source).stem}_{pred.frame:06d}"
        cv2.imwrite(str(self.folder / f"{stem}_frame.png"), to_bgr(frame))
        if view is not None:
            cv2.imwrite(str(self.folder / f"{stem}_overlay.png"), to_bgr(view))
        np.save(self.folder / f"{stem}_map.npy", amap.astype(np.float32))
        if self.cal is not None:  # at model resolution
            cv2.imwrite(str(self.folder / f"{stem}_mask.png"), self.cal.mask_image(amap))

    def close(self) -> None:
        pass


def render_view(frame: np.ndarray, amap: np.ndarray, pred: Prediction, lo: float, hi: float, fps: float | None = None) -> np.ndarray:
    """The overlay frame with its score line (shared by the video, snapshots and viewers)."""
    if pred.score is not None:
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
            raise ClipadError(f"--show needs OpenCV with GUI support (this install has opencv-python-headless); {hint}") from None

    def write(self, pred: Prediction, frame: np.ndarray, amap: np.ndarray, view: np.ndarray | None) -> None:
        cv2.imshow(self.WINDOW, to_bgr(view if view is not None else frame))
        cv2.waitKey(1)

    def close(self) -> None:
        cv2.destroyAllWindows()
