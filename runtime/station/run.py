"""`clipad station`: the recipes, the station, its publishers and its trigger front-ends, wired
for the command line, and the summary line at the end.

With ``--replay`` the images are triggered one after another (waiting for room in the queue)
and the command ends when every job has its result; with ``--serve`` it serves HTTP triggers,
results, /metrics and the probes until SIGINT or SIGTERM (after a replay, when both are given).
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.runtime.station.events import EventsPublisher
from clipad.runtime.station.http import StationServer
from clipad.runtime.station.metrics import StationMetrics
from clipad.runtime.station.recipes import RecipeBook, ServeOptions
from clipad.runtime.station.records import JobResult, Publisher
from clipad.runtime.station.replay import replay, replay_items
from clipad.runtime.station.station import Station, StationConfig
from clipad.runtime.station.views import TRIGGER_IMAGES, StationViews
from clipad.runtime.viewer_access import parse_serve

STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n))


class Tally:
    """A publisher counting results by verdict (and late verdicts), for the summary line."""

    def __init__(self):
        self.verdicts: Counter[str] = Counter()
        self.late_verdicts = 0
        self.done = threading.Condition()

    def publish(self, result: JobResult) -> None:
        with self.done:
            self.verdicts[result.verdict.value] += 1
            self.done.notify_all()

    def late(self, result: JobResult) -> None:  # noqa: ARG002 - counted only
        self.late_verdicts += 1

    def close(self) -> None:
        pass

    def wait_for(self, n: int, timeout: float) -> bool:
        """Wait until ``n`` results have been published; False when they have not within ``timeout``."""
        with self.done:
            return self.done.wait_for(lambda: self.verdicts.total() >= n, timeout)

    def line(self) -> str:
        counts = ", ".join(f"{v} {self.verdicts[v]}" for v in ("OK", "NG", "error", "timeout"))
        return f"summary: {self.verdicts.total()} jobs: {counts}; late verdicts logged {self.late_verdicts}"


@dataclass
class StationRun:
    """The options of `clipad station` (see cli.py for their help)."""

    recipes: list[str] | None = None
    active: str | None = None
    deadline_ms: float | None = None
    queue: int = 16
    events: Path | None = None
    serve: str | None = None
    replay: str | None = None
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    stop: threading.Event = field(default_factory=threading.Event)  # set by SIGINT/SIGTERM (or a test)

    def check(self) -> None:
        """One line for options that cannot work, before any model is loaded."""
        if not self.recipes:
            raise ClipadError("a station needs at least one --recipe NAME=ARTIFACTS_DIR")
        if self.serve is None and self.replay is None:
            raise ClipadError("give --serve HOST:PORT (HTTP triggers) and/or --replay IMAGES (a folder or list file)")
        StationConfig(queue=self.queue, deadline_ms=self.deadline_ms).check()
        if self.serve is not None:
            parse_serve(self.serve)

    def run(self, say: Callable[[str], None]) -> None:
        self.check()
        items = replay_items(self.replay) if self.replay is not None else []
        book = RecipeBook.load(self.recipes or [], self.active, ServeOptions(self.backend, self.device, self.precision))
        closing: list = [book]
        try:
            for note in book.notes:
                say(note)
            tally, metrics = Tally(), StationMetrics()
            publishers: list[Publisher] = [metrics, tally]
            if self.events is not None:
                events = EventsPublisher(self.events)
                publishers.insert(0, events)
                for note in events.notes:
                    say(note)
            station = Station(book, publishers, StationConfig(queue=self.queue, deadline_ms=self.deadline_ms), say)
            closing.append(station)
            metrics.bind(station)
            say(f"station {station.run}: recipes {', '.join(book.names)} (active {book.active})")
            if self.serve is not None:
                # the operator's page: counts every result, draws inspected jobs (the station closes it)
                views = StationViews(station.source.name if station.source is not None else TRIGGER_IMAGES, log=say)
                station.add_publisher(views)
                station.add_watcher(views)
                server = StationServer(station, *parse_serve(self.serve), metrics, views=views)
                closing.append(server)
                token = f"?token={server.token}" if server.token else ""
                say(f"serving the operator's page /, POST /trigger, /result/<job id>, /metrics, /healthz, /readyz at "
                    f"{server.address}{token}")  # fmt: skip
            if items:
                ids = replay(station, items)
                tally.wait_for(len(ids), 60 + len(ids) * ((self.deadline_ms or 10_000) / 1000))
            if self.serve is not None:
                self._wait_for_stop()
        finally:
            for thing in reversed(closing):
                thing.close()
        say(tally.line())

    def _wait_for_stop(self) -> None:
        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                old[sig] = signal.signal(sig, lambda *_: self.stop.set())
        try:
            while not self.stop.wait(0.5):
                pass
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
