"""The frame loop: sources -> the one image path (model_batch) -> backend -> scores -> sinks.

File sources are read ahead by a capture thread (capture and resize overlap with inference);
live sources are sampled just before each inference, so the frame being inferred is never
older than one inference period plus one camera frame. Sinks run in a writer thread. Stage
latencies are kept for the status line and the summary.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from clipad.calibration.constants import Calibration
from clipad.data.images import model_batch
from clipad.runtime.backends import Backend
from clipad.runtime.scoring import score_batch
from clipad.runtime.sinks import Sink, SinkError, render_view
from clipad.runtime.sources import Frame, Source

STAGES = ("capture", "preprocess", "inference", "postprocess")
_DONE = object()


@dataclass
class Batch:
    frames: list[Frame]
    images: np.ndarray  # uint8 [B, S, S, 3]
    capture_ms: float
    preprocess_ms: float


@dataclass
class Summary:
    frames: int = 0
    seconds: float = 0.0
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    frame_age_ms: list[float] = field(default_factory=list)  # oldest frame of each batch, at inference start
    dropped: int = 0
    bad_frames: int = 0
    reconnects: int = 0
    error: str | None = None
    stopped_by: str = "end of input"

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def percentiles(self) -> dict[str, tuple[float, float]]:
        return {s: (float(np.percentile(v, 50)), float(np.percentile(v, 99))) if v else (0.0, 0.0) for s, v in self.latency_ms.items()}

    def line(self) -> str:
        p = self.percentiles()
        stages = " ".join(f"{s} {p[s][0]:.1f}/{p[s][1]:.1f}" for s in STAGES)
        return (f"{self.frames} frames, {self.fps:.1f} fps | ms p50/p99: {stages} | dropped {self.dropped}, "
                f"bad {self.bad_frames}, reconnects {self.reconnects}")


class Pipeline:
    def __init__(
        self,
        backend: Backend,
        sources: list[Source],
        image_size: int,
        calibration: Calibration | None,
        sinks: list[Sink],
        max_frames: int | None = None,
        status_every: float = 5.0,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
        needs_view: bool = False,
    ):
        self.backend, self.sources, self.size = backend, sources, image_size
        self.cal, self.sinks, self.max_frames = calibration, sinks, max_frames
        self.status_every, self.log, self.needs_view = status_every, log, needs_view
        self.stop = threading.Event()
        self.summary = Summary()
        self.live = any(s.live for s in sources)
        self._counter = 0
        self._reported_events = {id(s): 0 for s in sources}

    # -- capture ---------------------------------------------------------------------------
    def _capture(self) -> Batch | None:
        t0 = time.perf_counter()
        frames: list[Frame] = []
        active = [s for s in self.sources if not s.exhausted]
        if not active:
            return None
        for src in active:  # one frame per source: several cameras share one inference call
            f = src.read(timeout=0.5 if src.live else 0)
            if f is not None:
                frames.append(f)
        if not self.live:  # files: fill the batch round-robin
            while len(frames) < self.backend.max_batch and any(not s.exhausted for s in self.sources):
                for src in [s for s in self.sources if not s.exhausted]:
                    f = src.read(0)
                    if f is not None and len(frames) < self.backend.max_batch:
                        frames.append(f)
        if self.max_frames is not None:
            frames = frames[: max(self.max_frames - self._counter, 0)]
        self._counter += len(frames)
        if not frames:
            return Batch([], np.zeros((0, self.size, self.size, 3), np.uint8), 0.0, 0.0) if self.live else None
        t1 = time.perf_counter()
        images = model_batch([f.image for f in frames], self.size)
        t2 = time.perf_counter()
        return Batch(frames, images, (t1 - t0) * 1000, (t2 - t1) * 1000)

    def _reader(self, out: queue.Queue) -> None:
        try:
            while not self.stop.is_set():
                batch = self._capture()
                if batch is None or (self.max_frames is not None and self._counter >= self.max_frames and not batch.frames):
                    break
                out.put(batch)
                if self.max_frames is not None and self._counter >= self.max_frames:
                    break
        finally:
            out.put(_DONE)

    # -- sinks -----------------------------------------------------------------------------
    def _writer(self, inbox: queue.Queue) -> None:
        while True:
            item = inbox.get()
            if item is _DONE:
                return
            if self.summary.error:
                continue
            t0 = time.perf_counter()
            frames, amap, records = item
            lo, hi = float(amap.min()), float(amap.max())
            try:
                for f, m, r in zip(frames, amap, records):
                    view = render_view(f.image, m, r, lo, hi, self.summary.fps) if self.needs_view else None
                    for sink in self.sinks:
                        sink.write(r, f.image, m, view)
            except SinkError as err:
                self.summary.error = str(err)
                self.stop.set()
            self.summary.latency_ms["postprocess"].append((time.perf_counter() - t0) * 1000)

    # -- loop ------------------------------------------------------------------------------
    def run(self) -> Summary:
        self._install_signals()
        start = last_status = time.perf_counter()
        batches: queue.Queue = queue.Queue(maxsize=2)
        reader = None
        if not self.live:
            reader = threading.Thread(target=self._reader, args=(batches,), name="capture", daemon=True)
            reader.start()
        inbox: queue.Queue = queue.Queue(maxsize=4)
        writer = threading.Thread(target=self._writer, args=(inbox,), name="sinks", daemon=True)
        writer.start()
        s = self.summary
        try:
            while not self.stop.is_set():
                if reader is not None:
                    batch = batches.get()
                    if batch is _DONE:
                        break
                else:
                    batch = self._capture()
                    if batch is None:
                        break
                    if not batch.frames:
                        if self.max_frames is not None and self._counter >= self.max_frames:
                            break
                        self._report_source_events()
                        continue
                t0 = time.perf_counter()
                s.frame_age_ms.append((time.time() - min(f.time for f in batch.frames)) * 1000)
                amap, prob = self.backend(batch.images)
                t1 = time.perf_counter()
                scores = score_batch(amap, prob, self.cal, [f.source for f in batch.frames])
                now = time.time()
                preds = [p.with_stream(f.index, f.time, round((now - f.time) * 1000, 3)) for f, p in zip(batch.frames, scores)]
                inbox.put((batch.frames, amap, preds))
                s.frames += len(batch.frames)
                s.latency_ms["capture"].append(batch.capture_ms)
                s.latency_ms["preprocess"].append(batch.preprocess_ms)
                s.latency_ms["inference"].append((t1 - t0) * 1000)
                s.seconds = time.perf_counter() - start
                if self.max_frames is not None and s.frames >= self.max_frames:
                    s.stopped_by = "--max-frames"
                    break
                if time.perf_counter() - last_status >= self.status_every:
                    last_status = time.perf_counter()
                    self._collect_source_stats()
                    self.log(s.line())
                    self._report_source_events()
        finally:
            self.stop.set()
            if reader is not None:
                while reader.is_alive():  # unblock a reader waiting on a full queue
                    try:
                        batches.get(timeout=0.1)
                    except queue.Empty:
                        pass
            inbox.put(_DONE)
            writer.join()
            for sink in self.sinks:
                sink.close()
            for src in self.sources:
                src.close()
            s.seconds = time.perf_counter() - start
            self._collect_source_stats()
            self._report_source_events()
            self._restore_signals()
        return s

    def _collect_source_stats(self) -> None:
        s = self.summary
        s.dropped = sum(x.stats.dropped for x in self.sources)
        s.bad_frames = sum(x.stats.bad_frames for x in self.sources)
        s.reconnects = sum(x.stats.reconnects for x in self.sources)

    def _report_source_events(self) -> None:
        for src in self.sources:
            seen = self._reported_events[id(src)]
            for e in src.stats.events[seen:]:
                self.log(e)
            self._reported_events[id(src)] = len(src.stats.events)

    def _install_signals(self) -> None:
        self._old = {}
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, _frame):
            self.summary.stopped_by = signal.Signals(signum).name
            self.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
