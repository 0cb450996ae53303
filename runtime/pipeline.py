"""The frame loop: sources -> the one image path (model_batch) -> backend -> scores -> sinks.

File sources are read ahead by a capture thread (capture and resize overlap with inference);
live sources are sampled just before each inference, so the frame being inferred is never
older than one inference period plus one camera frame. Sinks run in a writer thread.

Built to run for weeks: a failure in any thread reaches the main loop, which stops within about
a second with the error in the summary (the CLI turns it into one line and a non-zero exit);
every wait between threads has a timeout and checks that the other side is alive and whether
the run is stopping; a sink that does not return from a write (an events file on a share that
stopped taking writes) is given up on ``SINK_STALL_S`` after a stop, so the other sinks are
still closed (the video finalised) and the run ends naming it; statistics
live in fixed memory (the last ``WINDOW`` batches per stage), so a status line costs the same at
hour 1 and week 3. A backend error is retried ``BACKEND_RETRIES`` times; then the frames of that
batch are recorded as errors and the run stops, unless the backend said it is only unavailable
for now (``BackendUnavailable``: a remote server down or restarting): then the run goes on with
the next batch, and the gap shows as error records and in the error count. A stop while the
backend is failing is a stop, not a backend failure.

With more sources than a batch holds, each batch starts with the source after the last one
read (round robin), so every camera gets its share; each source's inspected and dropped
frames are in the status line and the summary.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from clipad.calibration.constants import Calibration
from clipad.core.redaction import redact
from clipad.data.geometry import ModelSize, geometry
from clipad.data.images import model_batch
from clipad.runtime.backends import Backend, BackendUnavailable
from clipad.runtime.records import FrameResult, Prediction
from clipad.runtime.scoring import score_batch
from clipad.runtime.sinks import Sink, SinkError, render_view
from clipad.runtime.sources import Frame, LiveSource, Source, wait_for_frames

STAGES = ("capture", "preprocess", "inference", "postprocess")
WINDOW = 4096  # batches whose stage latencies the percentiles cover
BACKEND_RETRIES = 2
RETRY_DELAYS_S = (0.2, 1.0)
POLL_S = 0.2  # how long a thread waits on a queue before checking the others again
LIVE_WAIT_S = 0.5  # longest wait for any camera's next frame before checking for a stop
SINK_STALL_S = 5.0  # after a stop, how long a sink may sit in one write before it is left behind
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
_DONE = object()


def _window() -> deque:
    return deque(maxlen=WINDOW)


@dataclass
class Batch:
    frames: list[Frame]
    images: np.ndarray  # uint8 [B, S, S, 3]
    capture_ms: float
    preprocess_ms: float


@dataclass
class SourceFigures:
    """One source's frames so far: inspected (read and inferred) and dropped (given up unread)."""

    inspected: int = 0
    dropped: int = 0


@dataclass
class Summary:
    """frames: frames with a record (scored or error); errors: of those, frames without a score;
    unwritten: of those, records that did not reach every sink (a sink failed or stalled);
    latency_ms / frame_age_ms: the last WINDOW batches; sources: each source's figures by name;
    all_down: every live source disconnected at the last look; error: why the run stopped early."""

    frames: int = 0
    errors: int = 0
    seconds: float = 0.0
    latency_ms: dict[str, deque] = field(default_factory=lambda: {s: _window() for s in STAGES})
    frame_age_ms: deque = field(default_factory=_window)  # oldest frame of each batch, at inference start
    dropped: int = 0
    bad_frames: int = 0
    reconnects: int = 0
    backend_retries: int = 0
    unwritten: int = 0
    sources: dict[str, SourceFigures] = field(default_factory=dict)
    all_down: bool = False
    error: str | None = None
    stopped_by: str = "end of input"

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def percentiles(self) -> dict[str, tuple[float, float]]:
        return {
            s: (float(np.percentile(v, 50)), float(np.percentile(v, 99))) if v else (0.0, 0.0)
            for s, v in self.latency_ms.items()
        }

    def line(self) -> str:
        p = self.percentiles()
        stages = " ".join(f"{s} {p[s][0]:.1f}/{p[s][1]:.1f}" for s in STAGES)
        per_source = ", ".join(f"{name} {f.inspected}/{f.dropped}" for name, f in self.sources.items())
        return (
            f"{self.frames} frames, {self.fps:.1f} fps | ms p50/p99: {stages} | dropped {self.dropped}, "
            f"bad {self.bad_frames}, errors {self.errors}, reconnects {self.reconnects}"
            + (f" | inspected/dropped: {per_source}" if per_source else "")
            + (" | all sources down" if self.all_down else "")
        )

    def fail(self, message: str) -> None:
        """Record the first failure (later ones are consequences)."""
        if self.error is None:
            self.error = redact(message)  # a source's or sink's error text may quote a URL


class Pipeline:
    def __init__(
        self,
        backend: Backend,
        sources: list[Source],
        size: ModelSize,
        calibration: Calibration | None,
        sinks: list[Sink],
        max_frames: int | None = None,
        status_every: float = 5.0,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
        needs_view: bool = False,
    ):
        self.backend, self.sources, self.size = backend, sources, geometry(size)
        self.cal, self.sinks, self.max_frames = calibration, sinks, max_frames
        self.status_every, self.log, self.needs_view = status_every, log, needs_view
        self.stop = threading.Event()
        self.summary = Summary()
        self._sinks_failed = False
        self._capture_error: str | None = None
        self.live = any(s.live for s in sources)
        self._counter = 0
        self._unavailable: str | None = None  # why the last batch got no outputs, when the backend may come back
        self._next_source = 0  # where the next batch starts reading (round robin over self.sources)
        # What the sink writer is doing, read by the main thread to tell a slow sink from a stalled one.
        self._sink_lock = threading.Lock()
        self._in_sink: Sink | None = None  # the sink whose write is running
        self._sink_since = 0.0  # when that write began (time.monotonic)
        self._closing = False  # the sinks are being closed: the writer must not call them again
        self._written = 0  # records every sink has taken
        self._stall_warned = False
        self._start = self._last_status = 0.0

    # -- capture ---------------------------------------------------------------------------
    def _read(self, src: Source, timeout: float) -> Frame | None:
        """One frame of ``src``; a source that raises ends the capture (the frames already read
        are still inferred and recorded, then the run stops with the error)."""
        try:
            return src.read(timeout=timeout)
        except Exception as err:  # noqa: BLE001 - a failing source must not pass for the end of its input
            if self._capture_error is None:
                self._capture_error = redact(f"reading frames from {src.name} failed: {type(err).__name__}: {err}")
            return None

    def _take(self, order: list[tuple[int, Source]], limit: int, frames: list[Frame]) -> None:
        """One frame from each source of ``order`` (position in self.sources, source) that has one,
        until ``frames`` holds ``limit``; the next batch starts after the last source read."""
        for pos, src in order:
            if len(frames) >= limit:
                return
            f = self._read(src, 0)
            if f is not None:
                frames.append(f)
                self._next_source = (pos + 1) % len(self.sources)

    def _active(self) -> list[tuple[int, Source]]:
        """The sources not exhausted, starting at the round robin's turn: (position, source)."""
        n = len(self.sources)
        turn = [(i % n, self.sources[i % n]) for i in range(self._next_source, self._next_source + n)]
        return [(i, src) for i, src in turn if not src.exhausted]

    def _capture(self) -> Batch | None:
        t0 = time.perf_counter()
        frames: list[Frame] = []
        active = self._active()
        if not active:
            return None
        # Frames are read only while the batch and --max-frames allow: a frame read is a frame
        # inferred, so every frame a source gives is accounted for (inferred or dropped by it).
        limit = (
            self.backend.max_batch
            if self.max_frames is None
            else min(self.backend.max_batch, self.max_frames - self._counter)
        )
        live = [s for _, s in active if isinstance(s, LiveSource)]  # the sources with live = True
        if live:  # wait for the first camera with a frame, not for each camera in turn
            wait_for_frames(live, LIVE_WAIT_S)
        self._take(active, limit, frames)  # one frame per source: several cameras share one inference call
        if not self.live:  # files: fill the batch round-robin
            while len(frames) < limit and self._capture_error is None and (active := self._active()):
                self._take(active, limit, frames)
        self._counter += len(frames)
        if not frames:
            return Batch([], np.zeros((0, *self.size.hw, 3), np.uint8), 0.0, 0.0) if self.live else None
        t1 = time.perf_counter()
        images = model_batch([f.image for f in frames], self.size)
        t2 = time.perf_counter()
        return Batch(frames, images, (t1 - t0) * 1000, (t2 - t1) * 1000)

    def _reader(self, out: queue.Queue) -> None:
        try:
            while not self.stop.is_set() and self._capture_error is None:
                batch = self._capture()
                if batch is None or (
                    self.max_frames is not None and self._counter >= self.max_frames and not batch.frames
                ):
                    break
                if not self._put(out, batch):
                    return
                if self.max_frames is not None and self._counter >= self.max_frames:
                    break
        except Exception as err:  # noqa: BLE001 - any failure ends the run with its reason, never as "end of input"
            if self._capture_error is None:
                self._capture_error = redact(f"reading frames failed: {type(err).__name__}: {err}")
        self._put(out, _DONE)

    def _put(self, q: queue.Queue, item) -> bool:
        """Put ``item`` unless the run stops first (the consumer may be gone); True when put."""
        while True:
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                if self.stop.is_set():
                    return False

    # -- sinks -----------------------------------------------------------------------------
    def _writer(self, inbox: queue.Queue) -> None:
        """Feed every record to every sink. Any sink failure stops the run with its reason; the
        queue is drained to the end either way, so the inference loop never waits on a dead writer."""
        while True:
            try:
                item = inbox.get(timeout=POLL_S)
            except queue.Empty:
                if self._closing:  # the main thread has given up on this thread
                    return
                continue
            if item is _DONE:
                return
            if self._sinks_failed:  # a sink cannot write any more: drain without writing
                continue
            t0 = time.perf_counter()
            frames, amap, records = item
            lo = hi = 0.0
            if self.needs_view:  # the overlay's colour scale, over the batch's finite values
                finite = amap[np.isfinite(amap)]
                lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
            sink = None
            try:
                for f, m, r in zip(frames, amap, records, strict=False):
                    view = None
                    if self.needs_view:  # drawn on the part of the frame the model saw
                        view = render_view(self.size.inspected(f.image), m, r, lo, hi, self.summary.fps)
                    result = FrameResult(r, f.image, m, view, f.fps)
                    for sink in self.sinks:
                        if not self._enter(sink):
                            return
                        try:
                            sink.write(result)
                        finally:
                            self._leave()
                    self._written += 1
            except SinkError as err:
                self._sinks_failed = True
                self.summary.fail(str(err))
                self.stop.set()
            except Exception as err:  # noqa: BLE001 - a sink's unexpected failure must not kill this thread silently
                self._sinks_failed = True
                self.summary.fail(f"{type(sink).__name__} failed: {type(err).__name__}: {err}")
                self.stop.set()
            self.summary.latency_ms["postprocess"].append((time.perf_counter() - t0) * 1000)

    def _enter(self, sink: Sink) -> bool:
        """Mark ``sink`` as being written; False once the sinks are being closed."""
        with self._sink_lock:
            if self._closing:
                return False
            self._in_sink, self._sink_since = sink, time.monotonic()
            return True

    def _leave(self) -> None:
        with self._sink_lock:
            self._in_sink = None

    def _stalled(self) -> Sink | None:
        """The sink whose current write has not returned for SINK_STALL_S, if any."""
        with self._sink_lock:
            if self._in_sink is not None and time.monotonic() - self._sink_since >= SINK_STALL_S:
                return self._in_sink
            return None

    def _close_sinks(self, writer: threading.Thread) -> None:
        """Close every sink the writer is not stuck in; the one it is stuck in is named in the error
        (closing it would block on the same write)."""
        with self._sink_lock:
            self._closing = True
            stuck = self._in_sink if writer.is_alive() else None
        s = self.summary
        for sink in self.sinks:
            if sink is stuck:
                continue
            try:
                sink.close()
            except Exception as err:  # noqa: BLE001 - close the others regardless
                s.fail(f"closing {type(sink).__name__} failed: {type(err).__name__}: {err}")
        s.unwritten = s.frames - self._written
        if stuck is not None:
            s.fail(
                f"the {type(stuck).__name__} sink did not finish a write within {SINK_STALL_S:g} s of the stop "
                f"(its file or share stopped taking writes); it was left open, the other sinks were closed, "
                f"{s.unwritten} records did not reach every sink"
            )

    # -- loop ------------------------------------------------------------------------------
    def run(self) -> Summary:
        self._install_signals()
        start = self._start = self._last_status = time.perf_counter()
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
                    try:
                        batch = batches.get(timeout=POLL_S)
                    except queue.Empty:
                        if not reader.is_alive() and batches.empty():
                            break
                        continue
                    if batch is _DONE:
                        break
                else:
                    batch = self._capture()
                    if batch is None:
                        break
                    if not batch.frames and self._capture_error is not None:
                        break
                    if not batch.frames:
                        if self.max_frames is not None and self._counter >= self.max_frames:
                            break
                        self._status()  # no frame from any camera: the status line says so
                        self._report_events()
                        continue
                t0 = time.perf_counter()
                s.frame_age_ms.append((time.monotonic() - min(f.monotonic for f in batch.frames)) * 1000)
                outputs = self._infer(batch)
                t1 = time.perf_counter()
                now = time.monotonic()
                if outputs is None:  # the backend kept failing: the frames are recorded as errors
                    amap = np.zeros((len(batch.frames), *self.size.hw), np.float32)
                    scores = [
                        Prediction.failed(f.source, s.error or self._unavailable or "backend failed")
                        for f in batch.frames
                    ]
                else:
                    amap, prob = outputs
                    scores = score_batch(amap, prob, self.cal, [f.source for f in batch.frames])
                preds = [
                    p.with_stream(f.index, f.time, round((now - f.monotonic) * 1000, 3))
                    for f, p in zip(batch.frames, scores, strict=False)
                ]
                handed = self._put_records(inbox, writer, (batch.frames, amap, preds))
                s.frames += len(batch.frames)  # records made: those not handed over count as unwritten
                s.errors += sum(p.label == "error" for p in preds)
                if not handed:
                    break
                s.latency_ms["capture"].append(batch.capture_ms)
                s.latency_ms["preprocess"].append(batch.preprocess_ms)
                s.latency_ms["inference"].append((t1 - t0) * 1000)
                s.seconds = time.perf_counter() - start
                if (outputs is None and s.error is not None) or (reader is None and self._capture_error is not None):
                    break
                if self.max_frames is not None and s.frames >= self.max_frames:
                    s.stopped_by = "--max-frames"
                    break
                self._status()
        finally:
            self.stop.set()
            if reader is not None:
                while reader.is_alive():  # unblock a reader waiting on a full queue
                    try:
                        batches.get(timeout=0.1)
                    except queue.Empty:
                        pass
            if self._put_records(inbox, writer, _DONE):
                while writer.is_alive() and self._stalled() is None:  # the records queued are written
                    writer.join(POLL_S)
            self._close_sinks(writer)
            for src in self.sources:
                src.interrupt()
            for src in self.sources:
                src.close()
            s.seconds = time.perf_counter() - start
            self._collect_source_stats()
            self._report_events()
            self._restore_signals()
        if self._capture_error is not None:
            s.fail(self._capture_error)
        if s.error is not None and s.stopped_by == "end of input":
            s.stopped_by = "error"
        return s

    def _infer(self, batch: Batch) -> tuple[np.ndarray, np.ndarray] | None:
        """The backend's outputs for ``batch``, retried on failure; None (and the run's error set)
        when every try failed."""
        for attempt in range(BACKEND_RETRIES + 1):
            try:
                return self.backend(batch.images)
            except Exception as err:  # noqa: BLE001 - ONNX Runtime and CUDA errors derive from Exception only
                reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                if attempt == BACKEND_RETRIES and isinstance(err, BackendUnavailable) and not self.stop.is_set():
                    self._unavailable = reason
                    self.log(
                        f"warning: backend unavailable ({reason}); the {len(batch.frames)} frames of that batch "
                        "are recorded as errors, going on"
                    )
                    return None
                if attempt < BACKEND_RETRIES and self.stop.is_set():  # a stop, not a backend failure
                    self._unavailable = reason
                    return None
                if attempt == BACKEND_RETRIES:
                    self.summary.fail(
                        f"the backend failed {attempt + 1} times in a row ({reason}); "
                        f"the {len(batch.frames)} frames of that batch are recorded as errors"
                    )
                    return None
                self.summary.backend_retries += 1
                self.log(f"warning: backend error ({reason}); retrying")
                if self.stop.wait(RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]):
                    self._unavailable = f"stopped while retrying the backend ({reason})"
                    return None
        return None

    def _put_records(self, inbox: queue.Queue, writer: threading.Thread, item) -> bool:
        """Hand records to the writer; False when the writer is gone (its error is in the summary)
        or, once the run is stopping, stuck in a sink for SINK_STALL_S."""
        while True:
            try:
                inbox.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                if not writer.is_alive():
                    self.summary.fail("the sink writer stopped unexpectedly")
                    return False
                stalled = self._stalled()
                if stalled is not None and self.stop.is_set():
                    return False
                if stalled is not None and not self._stall_warned:
                    self._stall_warned = True
                    self.log(
                        f"warning: the {type(stalled).__name__} sink has not returned from a write for "
                        f"{SINK_STALL_S:g} s; frames wait (a stop ends the run without it)"
                    )

    def _status(self) -> None:
        """A status line when one is due."""
        now = time.perf_counter()
        if now - self._last_status < self.status_every:
            return
        self._last_status = now
        self.summary.seconds = now - self._start
        self._collect_source_stats()
        self.log(self.summary.line())
        self._report_events()

    def _collect_source_stats(self) -> None:
        s = self.summary
        s.dropped = sum(x.stats.dropped for x in self.sources)
        s.bad_frames = sum(x.stats.bad_frames for x in self.sources)
        s.reconnects = sum(x.stats.reconnects for x in self.sources)
        figures: dict[str, SourceFigures] = {}
        for x in self.sources:  # two sources of one name add up
            f = figures.setdefault(x.name, SourceFigures())
            f.inspected += x.stats.frames
            f.dropped += x.stats.dropped
        s.sources = figures
        live = [x for x in self.sources if isinstance(x, LiveSource)]
        s.all_down = bool(live) and not any(x.connected for x in live)

    def _report_events(self) -> None:
        """Log what sources and sinks have to say (reconnects, lost streams, failed snapshots)."""
        for queue_ in [src.stats.events for src in self.sources] + [
            getattr(sink, "notes", None) for sink in self.sinks
        ]:
            while queue_:
                self.log(queue_.popleft())

    def _install_signals(self) -> None:
        self._old = {}
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, _frame):
            self.summary.stopped_by = signal.Signals(signum).name
            self.stop.set()

        for sig in STOP_SIGNALS:  # SIGHUP too: a closed terminal or a service manager's reload stops cleanly
            self._old[sig] = signal.signal(sig, handler)

    def _restore_signals(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
