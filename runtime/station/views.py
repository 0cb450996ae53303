"""What the operator's page shows, kept in bounded memory: per camera the latest overlay, the last
NG parts, counters per recipe and the score history.

``StationViews`` is two things to the station:

- an ``InspectionWatcher``: the worker hands it each inspected job's image and anomaly map; it
  only keeps references there (the map copied, a few KB; the image is the job's own array, which
  the station never writes after decoding). The newest job per camera waits in a newest-wins slot
  (one replaced before it was drawn is counted in ``skipped``); NG jobs wait in a queue as long as
  the gallery, so a burst of NG parts is not lost to the live slot. The views' own thread draws
  the overlays (``clipad.runtime.overlay``) and encodes the JPEGs, never the worker;
- a ``Publisher``: every result (also error and timeout, which have no pixels) is counted per
  recipe and verdict since start and in the last hour, and a scored one goes into the history.

"Last hour" is rolling by the minute: the current clock minute and the 59 before it (60 buckets
of counts, whatever the job rate). Memory is bounded everywhere: one live JPEG per camera,
``gallery`` NG parts (thumbnail and full-size overlay JPEG each), ``history`` score points, and
at most ``MAX_RECIPES`` recipe names counted (names beyond are counted as ``OTHER``: a trigger
may name any recipe, and each unknown name is an error result).
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np

from clipad.data.colour import to_bgr
from clipad.runtime.overlay import overlay, put_label
from clipad.runtime.station.records import JobResult, Verdict

TRIGGER_IMAGES = "trigger images"  # the camera name of images that came with their triggers
SCORE_THRESHOLD = 0.5  # the normalised score at the calibrated threshold (calibration.thresholds.normalised_score)
MAX_RECIPES = 64
OTHER = "(other)"
HOUR_BUCKETS = 60  # one-minute buckets of the rolling hour
LABEL_MIN_WIDTH = 320  # pixels: narrower overlays get no text drawn on them (it would cover the part)


@dataclass(frozen=True)
class Counts:
    """Results by verdict."""

    ok: int = 0
    ng: int = 0
    error: int = 0
    timeout: int = 0

    @classmethod
    def of(cls, counter: Counter[Verdict]) -> Counts:
        return cls(counter[Verdict.OK], counter[Verdict.NG], counter[Verdict.ERROR], counter[Verdict.TIMEOUT])


@dataclass(frozen=True)
class RecipeCounts:
    """One recipe's results since the views started and in the rolling last hour."""

    recipe: str
    since_start: Counts
    last_hour: Counts


@dataclass(frozen=True)
class Inspected:
    """One inspected job as the page shows it: ``key`` numbers it in the views (the URL of its
    JPEGs); ``time``: the trigger's wall-clock seconds; ``score``: normalised, 0.5 at the threshold."""

    key: int
    camera: str
    job_id: str
    part_id: str
    recipe: str
    verdict: Verdict
    score: float | None
    time: float


@dataclass(frozen=True)
class ScorePoint:
    """One scored result in the history (``time``: trigger wall-clock seconds)."""

    time: float
    score: float
    verdict: Verdict
    recipe: str
    part_id: str
    job_id: str


@dataclass(frozen=True)
class ViewsState:
    """A snapshot for the page: ``live``: the latest drawn job per camera (its JPEG at
    ``/live/<camera index>.jpg``); ``gallery``: the last NG parts, newest first; ``history``: oldest
    first; ``skipped``: live jobs replaced before they were drawn; ``threshold``: where the score's
    threshold is."""

    started: float
    cameras: tuple[str, ...]
    live: tuple[Inspected | None, ...]
    counters: tuple[RecipeCounts, ...]
    total: RecipeCounts
    gallery: tuple[Inspected, ...]
    history: tuple[ScorePoint, ...]
    skipped: int
    threshold: float = SCORE_THRESHOLD

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # Verdict is a str enum: json writes its value


@dataclass
class _Shot:
    """A job's pixels waiting to be drawn."""

    info: Inspected
    image: np.ndarray  # RGB uint8 [H, W, 3]
    amap: np.ndarray  # float32 [S', S']


@dataclass
class _Drawn:
    info: Inspected
    jpeg: bytes
    thumb: bytes = b""


@dataclass
class _Tally:
    since: dict[str, Counter[Verdict]] = field(default_factory=dict)
    hour: deque[tuple[int, Counter[tuple[str, Verdict]]]] = field(default_factory=lambda: deque(maxlen=HOUR_BUCKETS))


class StationViews:
    """The page's state for ``camera`` (the station's source name, or ``TRIGGER_IMAGES``).

    ``gallery``: NG parts kept; ``history``: score points kept; ``thumb_px``: the gallery
    thumbnails' width in pixels (at most the image's); ``quality``: JPEG quality; ``clock``: wall-clock seconds (tests
    give their own); ``log``: one line per drawing failure (the first, then every 100th)."""

    def __init__(
        self,
        camera: str = TRIGGER_IMAGES,
        gallery: int = 12,
        history: int = 600,
        thumb_px: int = 200,
        quality: int = 80,
        clock: Callable[[], float] = time.time,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    ):
        if gallery < 1 or history < 1 or thumb_px < 8:
            raise ValueError("gallery and history must be at least 1, thumb_px at least 8")
        self.cameras: tuple[str, ...] = (camera,)
        self.thumb_px, self.quality, self.clock, self.log = thumb_px, quality, clock, log
        self.started = clock()
        self._keys = itertools.count(1)
        self._lock = threading.Condition()
        self._newest: dict[str, _Shot] = {}  # camera -> the newest job not yet drawn
        self._ng_todo: deque[_Shot] = deque(maxlen=gallery)
        self._live: dict[str, _Drawn] = {}
        self._gallery: deque[_Drawn] = deque(maxlen=gallery)  # oldest first
        self._history: deque[ScorePoint] = deque(maxlen=history)
        self._tally = _Tally()
        self.skipped = self.failures = 0
        self._closed = self._busy = False
        self._thread = threading.Thread(target=self._draw_loop, name="station-views", daemon=True)
        self._thread.start()

    # -- InspectionWatcher (the station's worker thread: keep references only) -------------
    def inspected(self, result: JobResult, image: np.ndarray, amap: np.ndarray) -> None:
        camera = self.cameras[0]
        info = Inspected(next(self._keys), camera, result.job_id, result.part_id, result.recipe, result.verdict,
                         result.score, result.triggered_at)  # fmt: skip
        shot = _Shot(info, image, np.array(amap, dtype=np.float32))  # a backend may reuse its output buffer
        with self._lock:
            if camera in self._newest:
                self.skipped += 1
            self._newest[camera] = shot
            if result.verdict is Verdict.NG:
                self._ng_todo.append(shot)
            self._lock.notify()

    # -- Publisher (the station's publisher thread) ---------------------------------------
    def publish(self, result: JobResult) -> None:
        minute = int(self.clock() // 60)
        with self._lock:
            since = self._tally.since
            recipe = result.recipe if result.recipe in since or len(since) < MAX_RECIPES else OTHER
            since.setdefault(recipe, Counter())[result.verdict] += 1
            hour = self._tally.hour
            if not hour or hour[-1][0] < minute:
                hour.append((minute, Counter()))
            hour[-1][1][recipe, result.verdict] += 1
            if result.score is not None:
                self._history.append(ScorePoint(result.triggered_at, result.score, result.verdict, result.recipe,
                                                result.part_id, result.job_id))  # fmt: skip

    def close(self) -> None:
        """Stop the drawing thread (jobs not drawn yet are dropped)."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(5.0)

    # -- reading (HTTP handlers) -----------------------------------------------------------
    def state(self) -> ViewsState:
        now_minute = int(self.clock() // 60)
        with self._lock:
            hour: dict[str, Counter[Verdict]] = {}
            for minute, counts in self._tally.hour:
                if minute > now_minute - HOUR_BUCKETS:
                    for (recipe, verdict), n in counts.items():
                        hour.setdefault(recipe, Counter())[verdict] += n
            names = sorted(self._tally.since)
            counters = tuple(RecipeCounts(r, Counts.of(self._tally.since[r]), Counts.of(hour.get(r, Counter())))
                             for r in names)  # fmt: skip
            total = RecipeCounts(
                "all",
                Counts.of(sum(self._tally.since.values(), Counter())),
                Counts.of(sum(hour.values(), Counter())),
            )
            live = tuple(d.info if (d := self._live.get(c)) is not None else None for c in self.cameras)
            gallery = tuple(d.info for d in reversed(self._gallery))
            return ViewsState(self.started, self.cameras, live, counters, total, gallery, tuple(self._history),
                              self.skipped)  # fmt: skip

    def live_jpeg(self, camera_index: int) -> bytes | None:
        """The latest overlay JPEG of camera ``camera_index`` (None before its first job)."""
        with self._lock:
            if not 0 <= camera_index < len(self.cameras):
                return None
            drawn = self._live.get(self.cameras[camera_index])
            return None if drawn is None else drawn.jpeg

    def ng_jpeg(self, key: int, full: bool) -> bytes | None:
        """The NG part ``key``'s overlay: full size, or its thumbnail (None: not in the gallery)."""
        with self._lock:
            for d in self._gallery:
                if d.info.key == key:
                    return d.jpeg if full else d.thumb
            return None

    def wait_drawn(self, timeout: float) -> bool:
        """Wait until every job handed in so far is drawn (tests); False when not within ``timeout``."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._newest and not self._ng_todo and not self._busy, timeout)

    # -- the drawing thread ----------------------------------------------------------------
    def _draw_loop(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._newest or self._ng_todo or self._closed)
                if self._closed:
                    return
                newest, self._newest = self._newest, {}
                ngs = list(self._ng_todo)
                self._ng_todo.clear()
                self._busy = True
            try:
                self._draw(newest, ngs)
            except Exception as err:  # noqa: BLE001 - a drawing failure must not stop the page
                self.failures += 1
                if self.failures == 1 or self.failures % 100 == 0:
                    self.log(f"warning: the operator's page could not draw a job: {type(err).__name__}: {err} "
                             f"({self.failures} so far)")  # fmt: skip
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def _draw(self, newest: dict[str, _Shot], ngs: list[_Shot]) -> None:
        made: dict[int, bytes] = {}  # key -> overlay JPEG (an NG job that is also the newest is drawn once)
        for shot in ngs:
            view = self._render(shot)
            made[shot.info.key] = jpeg = self._jpeg(view)
            h, w = view.shape[:2]
            tw = min(self.thumb_px, w)  # never larger than the image
            small = cv2.resize(view, (tw, max(1, round(h * tw / w))), interpolation=cv2.INTER_AREA)
            drawn = _Drawn(shot.info, jpeg, self._jpeg(small))
            with self._lock:
                self._gallery.append(drawn)
        for camera, shot in newest.items():
            jpeg = made.get(shot.info.key) or self._jpeg(self._render(shot))
            with self._lock:
                self._live[camera] = _Drawn(shot.info, jpeg)

    def _render(self, shot: _Shot) -> np.ndarray:
        """The job's overlay (the map's colour scale from its own finite min to max), labelled with
        its part id, verdict and score when the image is wide enough to read it (the page also
        shows them as text)."""
        finite = shot.amap[np.isfinite(shot.amap)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        view = overlay(shot.image, shot.amap, lo, hi)
        if view.shape[1] < LABEL_MIN_WIDTH:
            return view
        i = shot.info
        score = "" if i.score is None else f" {i.score:.3f}"
        return put_label(view, f"{i.part_id}  {i.verdict.value}{score}")

    def _jpeg(self, rgb: np.ndarray) -> bytes:
        ok, buf = cv2.imencode(".jpg", to_bgr(rgb), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return buf.tobytes()
