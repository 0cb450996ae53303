"""The station: triggers in, exactly one result per job out, fail-safe.

Three threads, each with one job, so no trigger source, slow channel or stalled backend can make
another part wait on it or lose its answer:

- the **worker** takes jobs from a bounded queue (a trigger that finds it full gets ERROR
  ``busy`` at once), decodes the image through the project's one image path
  (``clipad.data.images``; a camera's frame, captured at the trigger or sent with it, is RGB
  already and names its frame in the result's ``frame_id``), runs the recipe's backend and scores
  with ``score_batch``: OK or NG from the calibrated label, ERROR for anything else (never OK on doubt);
- the **deadline timer** publishes TIMEOUT for a job whose deadline passes before its verdict,
  without waiting for the worker; the verdict that comes later is logged only (``late=True``,
  to publishers that implement ``LateListener``: the events file and the metrics);
- the **publisher** hands every result, in the order jobs finished, to every ``Publisher``.

Exactly one result per job id: a job is finished by whoever removes it from the pending map
first (worker or timer, under one lock); the other one's result is late. The publishers never
hold up inference: results wait for them in an outbox; while more than ``backlog`` results wait
(a publisher stuck in a call), new triggers are answered ERROR ``busy`` at once instead of
queueing more work, and a publisher inside one call for ``stall_s`` puts the station in state
``error`` (so /readyz and OPC UA show it) with one line to the operator.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from clipad.core.errors import ClipadError
from clipad.core.redaction import redact
from clipad.data.images import ImageReadError, decode_rgb, model_batch, read_rgb
from clipad.runtime.runfiles import new_run_id
from clipad.runtime.scoring import score_batch
from clipad.runtime.sources import Frame, Source
from clipad.runtime.station.recipes import RecipeBook
from clipad.runtime.station.records import JobResult, Publisher, StationState, Trigger, Verdict

BUSY = "busy"
NO_IMAGE = "no image and no source"
CAPTURE_TIMEOUT_S = 5.0  # a trigger's frame must come within this (or the job's deadline, if shorter)
POLL_S = 0.2  # how often idle threads look at the stop flag


@dataclass(frozen=True)
class StationConfig:
    """``queue``: jobs that may wait for the worker (beyond: ERROR busy); ``deadline_ms``: each
    job's deadline from its trigger's reception (None: none); ``recent``: results kept for
    ``result(job_id)``; ``backlog``: results that may wait for the publishers before new triggers
    are refused busy; ``stall_s``: a publisher call this long puts the station in state error;
    ``run``: the run id that prefixes job ids (default: a fresh one)."""

    queue: int = 16
    deadline_ms: float | None = None
    recent: int = 4096
    backlog: int = 10_000
    stall_s: float = 2.0
    run: str | None = None

    def check(self) -> None:
        if self.queue < 1:
            raise ClipadError(f"--queue must be at least 1, got {self.queue}")
        if self.deadline_ms is not None and not 0 < self.deadline_ms < 86_400_000:
            raise ClipadError(f"--deadline-ms must be above 0 (and below a day), got {self.deadline_ms}")


@runtime_checkable
class LateListener(Protocol):
    """A publisher that also wants the verdicts that came after their job's TIMEOUT (marked
    ``late``; they are never a job's answer): the events log and the metrics."""

    def late(self, result: JobResult) -> None: ...


@runtime_checkable
class InspectionWatcher(Protocol):
    """Sees every inspected job with its pixels (the operator's page: live overlay, NG gallery).
    ``image``: the job's RGB uint8 [H, W, 3] at its own size; ``amap``: the anomaly map float32
    [S', S'] at model resolution; called on the worker after the result is handed out, so it
    must only copy or queue (never encode or draw there)."""

    def inspected(self, result: JobResult, image: np.ndarray, amap: np.ndarray) -> None: ...


@dataclass
class _Job:
    job_id: str
    part_id: str
    recipe: str
    trigger: Trigger
    started: bool = False  # the worker took it (a timeout then says "inspecting", else "queued")


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


class Station:
    """The station behind every trigger source (``records.StationPort``): see the module's text.

    ``book``: the opened recipes (the station does not close it); ``publishers``: where results go
    (more can be added with ``add_publisher``; the station closes them); ``log``: one line per
    thing the operator should know; ``source``: where a trigger without an image gets its frame
    (``Source.capture``: never one captured before the trigger; the caller closes it)."""

    def __init__(
        self,
        book: RecipeBook,
        publishers: Sequence[Publisher] = (),
        config: StationConfig | None = None,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
        source: Source | None = None,
    ):
        self.book, self.config, self.log, self.source = book, config or StationConfig(), log, source
        self._watchers: list[InspectionWatcher] = []
        self.config.check()
        self.run = self.config.run or new_run_id()
        self._publishers: list[Publisher] = list(publishers)
        self._counter = itertools.count(1)
        self._lock = threading.Lock()  # the pending map, the recent map and the flags
        self._pending: dict[str, _Job] = {}
        self._recent: OrderedDict[str, JobResult] = OrderedDict()
        self._finished = threading.Condition(self._lock)  # notified at every result
        self._jobs: queue.Queue[_Job] = queue.Queue(maxsize=self.config.queue)
        self._room = threading.Condition()  # notified when the worker takes a job
        self._outbox: deque[tuple[bool, JobResult]] = deque()
        self._out_ready = threading.Condition()
        self._timers: list[tuple[float, int, _Job]] = []
        self._timer_wake = threading.Condition()
        self._stop = threading.Event()
        self._halted = False
        self._inspecting = False  # the worker holds a job (perhaps one already answered TIMEOUT)
        self._backend_ok = True
        self._in_publish: tuple[Publisher, float] | None = None
        self._stall_said = False
        self.late_count = 0
        self.publish_errors = 0
        self.busy_count = 0
        self._threads = [
            threading.Thread(target=self._work, name="station-worker", daemon=True),
            threading.Thread(target=self._watch_deadlines, name="station-deadlines", daemon=True),
            threading.Thread(target=self._publish_loop, name="station-publisher", daemon=True),
        ]
        for t in self._threads:
            t.start()

    # -- StationPort ---------------------------------------------------------------------
    def submit(self, trigger: Trigger) -> str:
        """A new job for ``trigger``: its id at once; its one result follows through the
        publishers (at once for a refused trigger, a full queue or an unknown recipe)."""
        n = next(self._counter)
        job_id = f"{self.run}-{n}"
        recipe = trigger.recipe
        if recipe is None:
            try:
                recipe = self.book.active
            except ClipadError:
                recipe = ""
        job = _Job(job_id, trigger.part_id if trigger.part_id is not None else str(n), recipe, trigger)
        why = self._refusal(job)
        if why is not None:
            self._finish(job, Verdict.ERROR, why)
            return job_id
        with self._lock:
            self._pending[job_id] = job
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            with self._lock:
                self.busy_count += 1
            self._finish(job, Verdict.ERROR, BUSY, deciding=True)  # takes it out of the pending map
            return job_id
        if self.config.deadline_ms is not None:
            due = trigger.received + self.config.deadline_ms / 1000
            with self._timer_wake:
                heapq.heappush(self._timers, (due, n, job))
                if self._timers[0][2] is job:
                    self._timer_wake.notify()
        return job_id

    def _refusal(self, job: _Job) -> str | None:
        """Why ``job`` gets ERROR at once (None: it is queued)."""
        if job.trigger.refused is not None:
            return job.trigger.refused
        if self._halted:
            return "station halted"
        if not job.recipe:
            return "no recipe is loaded"
        if job.recipe not in self.book:
            return self.book.why_not(job.recipe)
        if len(self._outbox) >= self.config.backlog:
            with self._lock:
                self.busy_count += 1
            return f"{BUSY}: {len(self._outbox)} results wait for the publishers"
        return None

    def result(self, job_id: str) -> JobResult | None:
        """The result of ``job_id`` while it is among the last ``recent`` results, else None."""
        with self._lock:
            return self._recent.get(job_id)

    def pending(self, job_id: str) -> bool:
        """Whether ``job_id`` is queued or being inspected (its result is still to come)."""
        with self._lock:
            return job_id in self._pending

    def wait(self, job_id: str, timeout: float) -> JobResult | None:
        """The result of ``job_id``, waiting up to ``timeout`` seconds for it; None when it does
        not come in time or the job is unknown (never submitted, or forgotten)."""
        end = time.monotonic() + timeout
        with self._finished:
            while job_id not in self._recent:
                left = end - time.monotonic()
                if left <= 0 or job_id not in self._pending:
                    return self._recent.get(job_id)
                self._finished.wait(left)
            return self._recent[job_id]

    def room(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the job queue has room (offline replays pace
        themselves with it instead of overflowing the queue); True when it has."""
        end = time.monotonic() + timeout
        with self._room:
            while self._jobs.full():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._room.wait(left)
            return True

    @property
    def state(self) -> StationState:
        if self._halted:
            return "halted"
        if self.problems():
            return "error"
        with self._lock:
            return "busy" if self._pending or self._inspecting or not self._jobs.empty() else "ready"

    def problems(self) -> list[str]:
        """What keeps the station from inspecting normally, one line each (empty: nothing)."""
        out = []
        if not self.book.names:
            out.append("no recipe is loaded")
        if not all(t.is_alive() for t in self._threads):
            out.append("a station thread has stopped")
        if not self._backend_ok:
            out.append("the backend failed its last job")
        stuck = self._in_publish
        if stuck is not None and time.monotonic() - stuck[1] >= self.config.stall_s:
            out.append(f"publisher {type(stuck[0]).__name__} has not returned for {time.monotonic() - stuck[1]:.1f} s")
        return out

    def readiness(self) -> list[str]:
        """Why the station is not ready for triggers (/readyz), one line each; empty when it is:
        recipes loaded, its threads alive, not halted."""
        if self._halted:
            return ["station halted"]
        out = []
        if not self.book.names:
            out.append("no recipe is loaded")
        if not all(t.is_alive() for t in self._threads):
            out.append("a station thread has stopped")
        return out

    @property
    def active_recipe(self) -> str:
        try:
            return self.book.active
        except ClipadError:
            return ""

    @property
    def recipes(self) -> list[str]:
        return self.book.names

    def switch(self, name: str) -> None:
        """Make the loaded recipe ``name`` active for triggers that name none (never loads)."""
        self.book.switch(name)

    @property
    def queue_depth(self) -> int:
        """Jobs waiting for the worker (the one being inspected not counted)."""
        return self._jobs.qsize()

    @property
    def backlog(self) -> int:
        """Results waiting for the publishers."""
        return len(self._outbox)

    @property
    def backend_up(self) -> bool:
        """False after a job whose backend call failed, until one succeeds."""
        return self._backend_ok

    def add_publisher(self, publisher: Publisher) -> None:
        """One more channel for the results from now on (an OPC UA server built on this station)."""
        self._publishers = [*self._publishers, publisher]  # the publisher thread reads a snapshot

    def add_watcher(self, watcher: InspectionWatcher) -> None:
        """One more ``InspectionWatcher`` from now on (the operator's page)."""
        self._watchers = [*self._watchers, watcher]

    # -- finishing -----------------------------------------------------------------------
    def _finish(
        self,
        job: _Job,
        verdict: Verdict,
        why: str | None = None,
        score: float | None = None,
        area: float | None = None,
        inference_ms: float | None = None,
        deciding: bool = False,
        frame_id: int | None = None,
    ) -> None:
        """Make ``job``'s result and hand it to the publishers, or, when ``deciding`` (the worker's
        verdict or the timer's TIMEOUT) and another one already answered the job, log it as late
        (the worker's) or drop it (the timer's: the verdict came first)."""
        now = time.monotonic()
        result = JobResult(
            job.job_id,
            job.part_id,
            job.recipe,
            verdict,
            job.trigger.via,
            job.trigger.received_wall,
            (now - job.trigger.received) * 1000,
            None if why is None else redact(why),
            score,
            area,
            inference_ms,
            frame_id,
            received=job.trigger.received,
        )
        with self._lock:
            answered = deciding and self._pending.pop(job.job_id, None) is None
            if not answered:
                self._recent[job.job_id] = result
                while len(self._recent) > self.config.recent:
                    self._recent.popitem(last=False)
                self._finished.notify_all()
        if answered and verdict is Verdict.TIMEOUT:
            return
        if answered:
            self.late_count += 1
            result = replace(result, late=True)
        if self._stop.is_set():  # closed: the channels are gone; the caller still gets it from ``result``
            return
        with self._out_ready:
            self._outbox.append((answered, result))
            self._out_ready.notify()

    # -- the worker ----------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._jobs.get(timeout=POLL_S)
            except queue.Empty:
                continue
            with self._room:
                self._room.notify_all()
            with self._lock:
                if job.job_id not in self._pending:  # timed out while queued: its result is out already
                    continue
                job.started = self._inspecting = True
            try:
                self._inspect(job)
            except Exception as err:  # noqa: BLE001 - any failure is this job's ERROR, and the worker goes on
                self._finish(job, Verdict.ERROR, f"inspection failed: {_one_line(err)}", deciding=True)
            finally:
                self._inspecting = False

    def _inspect(self, job: _Job) -> None:
        """Decode, infer, score and finish ``job`` (ERROR with why for any failure)."""
        try:
            recipe = self.book.get(job.recipe)
        except ClipadError as err:
            self._finish(job, Verdict.ERROR, str(err), deciding=True)
            return
        image, frame_id = job.trigger.image, job.trigger.frame_id
        if image is None:
            frame = self._capture(job)
            if frame is None:
                return
            rgb, frame_id = frame.image, frame.index if frame.frame_id is None else frame.frame_id
        elif isinstance(image, np.ndarray):  # a camera's frame: RGB already
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                bad = f"the trigger's image is not RGB uint8 [H, W, 3] ({image.dtype} {list(image.shape)})"
                self._finish(job, Verdict.ERROR, bad, deciding=True)
                return
            rgb = image
        else:
            try:
                rgb = decode_rgb(image, "the trigger's image") if isinstance(image, bytes) else read_rgb(Path(image))
            except ImageReadError as err:
                self._finish(job, Verdict.ERROR, str(err), deciding=True)
                return
        fit = recipe.geometry  # read from the recipe's manifest once per job
        batch = model_batch([rgb], fit)
        t0 = time.perf_counter()
        try:
            amap, prob = recipe.infer(batch)
        except Exception as err:  # noqa: BLE001 - ONNX Runtime and CUDA errors derive from Exception only
            self._backend_ok = False
            self._finish(job, Verdict.ERROR, f"backend failed: {_one_line(err)}", deciding=True, frame_id=frame_id)
            return
        inference_ms = (time.perf_counter() - t0) * 1000
        self._backend_ok = True
        pred = score_batch(amap, prob, recipe.calibration, [job.part_id])[0]
        if pred.label == "anomalous":
            verdict, why = Verdict.NG, None
        elif pred.label == "normal":
            verdict, why = Verdict.OK, None
        else:
            verdict, why = Verdict.ERROR, pred.error or "no verdict from the scores"
        self._finish(job, verdict, why, pred.score, pred.defect_area, inference_ms, deciding=True, frame_id=frame_id)
        if self._watchers:
            result = self.result(job.job_id)
            if result is not None and result.verdict is verdict:  # not a TIMEOUT answered first
                for w in self._watchers:
                    w.inspected(result, fit.inspected(rgb), amap[0])

    def _capture(self, job: _Job) -> Frame | None:
        """The job's frame from the station's source, grabbed after its trigger; None after
        finishing the job ERROR when there is no source or no frame."""
        if self.source is None:
            self._finish(job, Verdict.ERROR, NO_IMAGE, deciding=True)
            return None
        wait = CAPTURE_TIMEOUT_S
        if self.config.deadline_ms is not None:
            wait = min(wait, max(job.trigger.received + self.config.deadline_ms / 1000 - time.monotonic(), 0.0))
        try:
            frame = self.source.capture(job.trigger.received, wait)
        except Exception as err:  # noqa: BLE001 - a capture library's failure is this job's ERROR
            frame, why = None, f"capture from {self.source.name} failed: {_one_line(err)}"
        else:
            why = f"no frame from {self.source.name} within {wait:.3g} s of the trigger"
        if frame is None:
            self._finish(job, Verdict.ERROR, why, deciding=True)
            return None
        return frame

    # -- deadlines -----------------------------------------------------------------------
    def _watch_deadlines(self) -> None:
        while not self._stop.is_set():
            self._say_stall()
            with self._timer_wake:
                if not self._timers:
                    self._timer_wake.wait(POLL_S)
                    continue
                due, _, job = self._timers[0]
                left = due - time.monotonic()
                if left > 0:
                    self._timer_wake.wait(min(left, POLL_S))
                    continue
                heapq.heappop(self._timers)
            with self._lock:
                if job.job_id not in self._pending:
                    continue
                where = "inspecting" if job.started else "queued"
            assert self.config.deadline_ms is not None
            self._finish(
                job,
                Verdict.TIMEOUT,
                f"no verdict within the deadline of {self.config.deadline_ms:g} ms ({where})",
                deciding=True,
            )

    # -- publishing ----------------------------------------------------------------------
    def _publish_loop(self) -> None:
        while True:
            with self._out_ready:
                while not self._outbox:
                    if self._stop.is_set():
                        return
                    self._out_ready.wait(POLL_S)
                late, result = self._outbox.popleft()
            for p in self._publishers:
                self._in_publish = (p, time.monotonic())
                try:
                    if not late:
                        p.publish(result)
                    elif isinstance(p, LateListener):
                        p.late(result)
                except Exception as err:  # noqa: BLE001 - one channel's failure must not stop the others
                    self.publish_errors += 1
                    if self.publish_errors == 1 or self.publish_errors % 100 == 0:
                        self.log(
                            f"warning: publisher {type(p).__name__} failed on job {result.job_id}: "
                            f"{redact(_one_line(err))} ({self.publish_errors} failures so far; the others go on)"
                        )
                finally:
                    self._in_publish = None
            self._stall_said = False

    def _say_stall(self) -> None:
        """One line when a publisher has been inside one call for ``stall_s`` (the deadline
        thread looks at least every POLL_S)."""
        stuck = self._in_publish
        if stuck is not None and not self._stall_said and time.monotonic() - stuck[1] >= self.config.stall_s:
            self._stall_said = True
            self.log(f"warning: publisher {type(stuck[0]).__name__} has not returned for {self.config.stall_s:g} s")

    # -- stopping ------------------------------------------------------------------------
    def close(self, drain_s: float = 5.0) -> None:
        """Halt: new triggers get ERROR "station halted"; queued jobs are inspected for up to
        ``drain_s`` seconds, then the rest get ERROR "station stopped"; every result is handed to
        the publishers (for up to ``drain_s`` more), which are then closed. Triggers after that
        still get their result (``result``, ``wait``), but no channel publishes it."""
        if self._stop.is_set():
            return
        self._halted = True
        end = time.monotonic() + drain_s
        with self._finished:
            while self._pending and time.monotonic() < end:
                self._finished.wait(min(POLL_S, max(end - time.monotonic(), 0.001)))
            left = list(self._pending.values())
        for job in left:
            self._finish(job, Verdict.ERROR, "station stopped before the job was inspected", deciding=True)
        end = time.monotonic() + drain_s
        while self._outbox and time.monotonic() < end:
            time.sleep(0.01)
        if self._outbox:
            self.log(f"warning: {len(self._outbox)} results were not handed to every publisher within {drain_s:g} s")
        self._stop.set()
        with self._out_ready:
            self._out_ready.notify_all()
        for t in self._threads:
            t.join(1.0)
        for p in self._publishers:
            try:
                p.close()
            except Exception as err:  # noqa: BLE001 - close the others regardless
                self.log(f"warning: closing publisher {type(p).__name__} failed: {redact(_one_line(err))}")
