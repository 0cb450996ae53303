"""Frame sources: image folders/globs and video files (every frame, in order) and live
cameras/streams (only the latest frame, kept by a grabber thread, with reconnects).

Every frame leaves here as RGB uint8 at its original size: image files are decoded by
``clipad.data.images.read_rgb`` (as `clipad eval` decodes them), video and camera frames
converted by ``clipad.data.colour.to_rgb``; the model-resolution resize happens in the pipeline,
through ``clipad.data.images.model_batch``.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from clipad.core.errors import ClipadError
from clipad.core.redaction import redact
from clipad.data.colour import to_rgb
from clipad.data.images import ImageReadError, list_images, read_rgb

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv"}
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp")
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000
MAX_BAD_FRAMES_IN_A_ROW = 25


@dataclass
class Frame:
    """One captured frame: RGB uint8 [H, W, 3] at the source's own size. ``time``: capture time,
    Unix seconds (what records show); ``monotonic``: capture time on time.monotonic, for ages and
    latencies, which a step of the wall clock must not make negative or huge. ``fps``: the rate at
    which the source's frames are meant to be played, where every frame is delivered (a video
    file's own rate); None for live sources (frames are dropped) and image files."""

    source: str
    index: int
    time: float
    image: np.ndarray
    monotonic: float = field(default_factory=lambda: time.monotonic())  # the module, not the field above
    fps: float | None = None
    grab_began: float | None = None  # time.monotonic() when the call that delivered it began (live sources)
    frame_id: int | None = None  # the camera's own frame (block) id, where it sends one (GenICam cameras)
    part_id: str | None = None  # a part id the camera sent with the frame (GenICam chunk data)


@dataclass(frozen=True)
class Grab:
    """One frame a live source's capture delivered (``LiveSource._grab``): ``image`` RGB uint8
    [H, W, 3]; ``began``: time.monotonic() when the grab that delivered it began, or when the
    software trigger that made it was fired; ``frame_id``: the camera's own frame id, if any;
    ``part_id``: a part id the camera sent with the frame (chunk data), if any."""

    image: np.ndarray
    began: float
    frame_id: int | None = None
    part_id: str | None = None


class StreamLost(Exception):
    """Raised by ``LiveSource._grab`` when the stream is gone: the source reports it (the text
    says why) and reopens with backoff."""


@dataclass
class SourceStats:
    frames: int = 0
    bad_frames: int = 0
    dropped: int = 0
    reconnects: int = 0
    lost: int = 0  # streams lost (failed reads, capture errors)
    events: deque[str] = field(default_factory=lambda: deque(maxlen=1000))  # messages not yet reported


class Source(ABC):
    live = False

    def __init__(self, name: str):
        self.name = name
        self.stats = SourceStats()

    @abstractmethod
    def read(self, timeout: float = 1.0) -> Frame | None:
        """The next frame; None when a file source is exhausted or a live one has nothing new."""

    @property
    def exhausted(self) -> bool:
        return False

    def capture(self, after: float, timeout: float) -> Frame | None:
        """A frame for a trigger received at ``after`` (time.monotonic()), never one captured
        before it; None when none comes within ``timeout`` seconds (or a file source is
        exhausted). Files and videos: the next frame in order (a replay of recorded parts).
        Live sources override it to wait for a frame grabbed after the trigger; a camera with a
        software trigger fires it here (one trigger, one frame)."""
        return self.read(timeout)

    def interrupt(self) -> None:  # noqa: B027 - deliberately not abstract: a no-op for sources without a thread
        """Ask the source's threads to stop, without waiting (``close`` waits): interrupting every
        source before closing any lets their waits overlap instead of adding up."""

    def close(self) -> None:  # noqa: B027 - deliberately not abstract: a no-op for sources that hold nothing
        """Release what the source holds (a capture, a thread); the default holds nothing."""


class ImageFilesSource(Source):
    """An image file, a folder (recursively, sorted) or a glob; unreadable files are skipped and counted."""

    def __init__(self, spec: str):
        super().__init__(spec)
        self.files = list_images(spec)
        self._next = 0

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self.files)

    @property
    def position(self) -> int:
        """How many files have been read or skipped."""
        return self._next

    def read(self, timeout: float = 1.0) -> Frame | None:
        while self._next < len(self.files):
            path = self.files[self._next]
            self._next += 1
            try:
                img = read_rgb(path)
            except ImageReadError:
                self.stats.bad_frames += 1
                self.stats.events.append(f"unreadable image skipped: {path}")
                continue
            self.stats.frames += 1
            return Frame(str(path), self._next - 1, time.time(), img)
        return None


class VideoFileSource(Source):
    """Every frame of a video file, in order; undecodable frames mid-stream are skipped and counted.
    A frame's index is its position in the video."""

    def __init__(self, path: str):
        super().__init__(path)
        if not Path(path).is_file():
            raise ClipadError(f"video file not found: {path}")
        self.cap = cv2.VideoCapture(path)
        if not self.cap.isOpened():
            raise ClipadError(f"cannot open video {path} (not a video OpenCV's FFmpeg can read?)")
        self.total = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        rate = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = rate if 0.0 < rate <= 1000.0 else None  # containers without a rate report 0
        self._index = 0
        self._done = False

    @property
    def exhausted(self) -> bool:
        return self._done

    def read(self, timeout: float = 1.0) -> Frame | None:
        bad_in_a_row = 0
        while not self._done:
            ok, img = self.cap.read()
            if ok and img is not None:
                # The decoder's position (the next frame's index), so that frames after skipped bad
                # ones keep their place in the video rather than a count of the frames decoded.
                idx = max(self._index, int(self.cap.get(cv2.CAP_PROP_POS_FRAMES)) - 1)
                self._index = idx + 1
                self.stats.frames += 1
                return Frame(self.name, idx, time.time(), to_rgb(img), fps=self.fps)
            # a failed read before the announced end is a bad frame; skip it and go on
            if self._index + bad_in_a_row + 1 < self.total and bad_in_a_row < MAX_BAD_FRAMES_IN_A_ROW:
                bad_in_a_row += 1
                self.stats.bad_frames += 1
                self.cap.grab()
                continue
            self._done = True
        return None

    def close(self) -> None:
        self.cap.release()


def stream_url(spec: str) -> str | None:
    """``spec`` with its scheme in lower case when it is a stream URL (schemes are case-insensitive,
    FFmpeg's protocol lookup is not), else None."""
    scheme, sep, rest = spec.partition("://")
    return f"{scheme.lower()}://{rest}" if sep and scheme.lower() in STREAM_SCHEMES else None


# Notified whenever any live source has a new frame, so the pipeline waits on all cameras at once
# (one silent camera must not slow the others down).
_NEW_FRAME = threading.Condition()


def wait_for_frames(sources: list[LiveSource], timeout: float) -> bool:
    """Wait until any of ``sources`` has an unread frame, at most ``timeout`` seconds; True if one has."""
    with _NEW_FRAME:
        return _NEW_FRAME.wait_for(lambda: any(s.has_frame for s in sources), timeout)


class LiveSource(Source):
    """A camera index or stream URL. A grabber thread keeps only the newest frame (older unread
    frames count as dropped); a lost stream is reopened with exponential backoff.

    Other capture APIs reuse the thread, the newest-frame policy and the reconnects by overriding
    four hooks: ``_open`` (a capture handle, or None), ``_grab`` (one frame, None for nothing yet,
    StreamLost when the stream is gone), ``_release`` and ``_unopened`` (the error when the first
    open fails)."""

    live = True

    def __init__(self, spec: int | str, name: str | None = None, backoff: tuple[float, float] = (0.5, 8.0)):
        # The name is what events, status lines, the viewer and errors show: never credentials.
        super().__init__(redact(name or (f"camera:{spec}" if isinstance(spec, int) else str(spec))))
        self.spec = spec if isinstance(spec, int) else stream_url(spec) or spec
        self.backoff = backoff
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._fresh = False
        self._stop = threading.Event()
        self._index = 0
        self.connected = False
        self.cap = self._open()
        if self.cap is None:
            raise ClipadError(self._unopened())
        self._thread = threading.Thread(target=self._grab_loop, name=f"grab-{self.name}", daemon=True)
        self._thread.start()

    def _open(self):
        if isinstance(self.spec, int):
            # Camera indexes go to the platform's camera API (V4L2, DirectShow, ...), which does not
            # take FFmpeg's open/read timeouts and may refuse to open with them.
            cap = cv2.VideoCapture(self.spec)
        else:  # streams and files: FFmpeg, whose timeouts keep a dead stream from hanging the grabber
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
            cap = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            return None
        self.connected = True
        return cap

    def _unopened(self) -> str:
        """The one line when the source cannot be opened at all."""
        if isinstance(self.spec, int):
            return f"no camera at index {self.spec} (or it is busy)"
        return f"cannot open stream {self.name} (opened nothing within {OPEN_TIMEOUT_MS / 1000:g} s)"

    def _grab(self) -> Grab | None:
        """The next frame from the open capture ``self.cap``, blocking until one comes; None when
        there is nothing this time but the stream is fine (a triggered camera between triggers);
        raises StreamLost when the stream is gone."""
        began = time.monotonic()
        ok, img = self.cap.read()
        if not ok or img is None:
            raise StreamLost("stream lost")
        return Grab(to_rgb(img), began)

    def _release(self) -> None:
        """Release the capture ``self.cap`` (not None)."""
        self.cap.release()

    def _grab_loop(self) -> None:
        """Grab until closed. Anything that goes wrong (a failed read, an exception in the capture
        library or the colour conversion) counts as a lost stream: reported, then reopened with
        backoff, never the end of this camera."""
        delay = self.backoff[0]
        while not self._stop.is_set():
            try:
                if self.cap is None:
                    if self._stop.wait(delay):
                        break
                    self.cap = self._open()
                    if self.cap is None:
                        delay = min(delay * 2, self.backoff[1])
                        continue
                    self.stats.reconnects += 1
                    self.stats.events.append(f"{self.name}: reconnected")
                    delay = self.backoff[0]
                grab = self._grab()
                if grab is None:
                    continue
                frame = Frame(
                    self.name,
                    self._index,
                    time.time(),
                    grab.image,
                    grab_began=grab.began,
                    frame_id=grab.frame_id,
                    part_id=grab.part_id,
                )
            except StreamLost as err:
                self._lose(f"{err}, reconnecting")
                continue
            except Exception as err:  # noqa: BLE001 - a capture thread that dies would lose the camera for good
                self._lose(redact(f"capture failed ({type(err).__name__}: {err}), reconnecting"))
                if self._stop.wait(delay):
                    break
                delay = min(delay * 2, self.backoff[1])
                continue
            self._index += 1
            with self._cond:
                if self._fresh:
                    self.stats.dropped += 1
                self._latest, self._fresh = frame, True
                self._cond.notify_all()
            with _NEW_FRAME:
                _NEW_FRAME.notify_all()

    @property
    def has_frame(self) -> bool:
        """Whether a frame is waiting to be read."""
        return self._fresh

    def _lose(self, why: str) -> None:
        self.stats.lost += 1
        self.stats.events.append(f"{self.name}: {why}")
        if self.cap is not None:
            try:
                self._release()
            except Exception:  # noqa: BLE001 - releasing a broken capture may fail too
                pass
        self.cap = None
        self.connected = False

    def read(self, timeout: float = 1.0) -> Frame | None:
        with self._cond:
            if not self._fresh:
                self._cond.wait(timeout)
            if not self._fresh:
                return None
            self._fresh = False
            self.stats.frames += 1
            return self._latest

    def capture(self, after: float, timeout: float) -> Frame | None:
        """The first frame whose grab began at or after ``after``: a frame already waiting, or
        being read when the trigger came, is older than the trigger and is skipped (counted as
        dropped). Frames a camera driver buffered before the grab cannot be told apart here; a
        camera with a software trigger (GenICam) has no such frames."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                latest = self._latest
                if self._fresh and latest is not None and (latest.grab_began or latest.monotonic) >= after:
                    self._fresh = False
                    self.stats.frames += 1
                    return latest
                left = end - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(min(left, 0.2))

    def interrupt(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=READ_TIMEOUT_MS / 1000 + 1)
        with self._cond:
            if self._fresh:  # grabbed but never read: counted as dropped, so every grabbed frame is accounted for
                self.stats.dropped += 1
                self._fresh = False
        if self.cap is not None:
            self._release()

    @property
    def grabbed(self) -> int:
        """Frames taken from the stream so far (read by the pipeline, or dropped)."""
        return self._index
