"""`clipad station`: the recipes, the station, its publishers and its trigger front-ends, wired
for the command line, and the summary line at the end.

With ``--source gige://...?trigger=hardware`` the camera is the trigger source: each frame it sends
(one per pulse on its line) is one job (``feeder``). With ``--replay`` the images are triggered one
after another (waiting for room in the queue) and the command ends when every job has its result;
with ``--serve`` it serves HTTP triggers, results, /metrics and the probes until SIGINT or SIGTERM
(after a replay, when both are given).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.runtime.cameras.spec import line_triggered
from clipad.runtime.source_specs import open_source
from clipad.runtime.sources import Source
from clipad.runtime.station.events import EventsPublisher
from clipad.runtime.station.feeder import CameraFeeder
from clipad.runtime.station.http import StationServer
from clipad.runtime.station.links import MqttCli, opcua_access, station_name
from clipad.runtime.station.metrics import StationMetrics
from clipad.runtime.station.mqtt import MqttCommands, MqttLink, MqttOptions, MqttPublisher
from clipad.runtime.station.opcua import Endpoint
from clipad.runtime.station.opcua import StationServer as OpcUaServer
from clipad.runtime.station.opcua_access import OpcUaAccess, check_access
from clipad.runtime.station.overhead import ChannelClock
from clipad.runtime.station.readings import mqtt_readings, opcua_readings, source_readings
from clipad.runtime.station.recipes import RecipeBook, ServeOptions
from clipad.runtime.station.records import JobResult, Publisher
from clipad.runtime.station.replay import replay, replay_items
from clipad.runtime.station.station import Station, StationConfig
from clipad.runtime.station.trigger_payload import ImagePaths
from clipad.runtime.station.views import TRIGGER_IMAGES, StationViews
from clipad.runtime.viewer_access import parse_serve

STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM") if hasattr(signal, n))


class _LogLines(logging.Handler):
    """The station's own warnings from its channels' loggers (``clipad.station.*``: OPC UA) to the
    operator as one line each, while the command runs."""

    def __init__(self, say: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.say = say
        self.logger = logging.getLogger("clipad.station")
        self.logger.addHandler(self)
        self.logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        self.say(f"{record.levelname.lower()}: {record.getMessage()}")

    def close(self) -> None:
        self.logger.removeHandler(self)
        self.logger.propagate = True
        super().close()


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
    """The options of `clipad station` (see cli.py for their help; links.py for the MQTT and OPC UA ones)."""

    recipes: list[str] | None = None
    active: str | None = None
    deadline_ms: float | None = None
    queue: int = 16
    events: Path | None = None
    trace: Path | None = None
    serve: str | None = None
    replay: str | None = None
    source: str | None = None
    image_root: Path | None = None
    name: str | None = None
    mqtt: str | None = None
    mqtt_password: str | None = None
    mqtt_ca: Path | None = None
    mqtt_cert: Path | None = None
    mqtt_key: Path | None = None
    spool: Path | None = None
    opcua: str | None = None
    opcua_user: list[str] | None = None
    opcua_certs: Path | None = None
    opcua_trust: list[Path] | None = None
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    stop: threading.Event = field(default_factory=threading.Event)  # set by SIGINT/SIGTERM (or a test)

    def check(self) -> tuple[MqttOptions | None, OpcUaAccess | None]:
        """One line for options that cannot work, before any model is loaded; the checked MQTT
        options and OPC UA access (None where not asked for)."""
        if not self.recipes:
            raise ClipadError("a station needs at least one --recipe NAME=ARTIFACTS_DIR")
        if not (self.serve or self.replay or self.mqtt or self.opcua or self._camera_triggers):
            raise ClipadError(
                "give a trigger source: --serve HOST:PORT, --mqtt URL, --opcua URL, --replay IMAGES, "
                "or --source gige://...?trigger=hardware"
            )
        StationConfig(queue=self.queue, deadline_ms=self.deadline_ms).check()
        if self.serve is not None:
            parse_serve(self.serve)
        if self.image_root is not None and not self.image_root.is_dir():
            raise ClipadError(f"--image-root {self.image_root} is not a folder")
        name = station_name(self.name)
        mqtt = None
        if self.mqtt is not None:
            spool = self.spool or (self.events.parent if self.events else Path()) / f"{name}-mqtt-spool"
            mqtt = MqttCli(self.mqtt, self.mqtt_password, self.mqtt_ca, self.mqtt_cert, self.mqtt_key).options(
                name, spool
            )
        elif any(v is not None for v in (self.mqtt_password, self.mqtt_ca, self.mqtt_cert, self.mqtt_key, self.spool)):
            raise ClipadError("--mqtt-password, --mqtt-ca, --mqtt-cert, --mqtt-key and --spool need --mqtt")
        access = None
        if self.opcua is not None:
            access = opcua_access(self.opcua_user, self.opcua_certs, self.opcua_trust)
            check_access(Endpoint.parse(self.opcua).host, access)
        elif self.opcua_user or self.opcua_certs or self.opcua_trust:
            raise ClipadError("--opcua-user, --opcua-certs and --opcua-trust need --opcua")
        return mqtt, access

    @property
    def _camera_triggers(self) -> bool:
        """Whether --source is a camera the line triggers: its frames are the jobs."""
        return self.source is not None and line_triggered(self.source)

    def run(self, say: Callable[[str], None]) -> None:
        mqtt, access = self.check()
        items = replay_items(self.replay) if self.replay is not None else []
        source = open_source(self.source) if self.source is not None else None  # a bad one: before any model
        closing: list = [source] if source is not None else []
        logs = _LogLines(say)
        try:
            book = RecipeBook.load(
                self.recipes or [], self.active, ServeOptions(self.backend, self.device, self.precision)
            )
            closing.append(book)
            for note in book.notes:
                say(note)
            tally, metrics = Tally(), StationMetrics()
            clock = ChannelClock(metrics, self.trace, say)
            closing.insert(0, clock)  # closed last: every channel has reported to it
            publishers: list[Publisher] = [metrics, tally]
            if self.events is not None:
                events = EventsPublisher(self.events)
                publishers.insert(0, events)
                for note in events.notes:
                    say(note)
            link, mqtt_out = None, None
            if mqtt is not None:
                link = MqttLink(mqtt, log=say)
                closing.append(link)  # closed after the station: its publisher drains through it
                mqtt_out = MqttPublisher(link, clock=clock)
                publishers.append(mqtt_out)
                metrics.watch(*mqtt_readings(mqtt_out))
            config = StationConfig(queue=self.queue, deadline_ms=self.deadline_ms)
            paths = ImagePaths(self.image_root)
            station = Station(book, publishers, config, say, source)
            closing.append(station)
            metrics.bind(station)
            if source is not None:
                metrics.watch(*source_readings(source))
            say(f"station {station.run}: recipes {', '.join(book.names)} (active {book.active})")
            self._say_source_events(say, source)  # a camera's settings read back, a refused one
            if self.opcua is not None:
                opcua = OpcUaServer(station, self.opcua, access=access, clock=clock)
                opcua.start()
                station.add_publisher(opcua)  # closed by the station, after its last result
                metrics.watch(*opcua_readings(opcua))
                say(f"OPC UA server at {opcua.endpoint.url} ({opcua.summary})")
            if link is not None and mqtt is not None:
                closing.append(MqttCommands(link, station, paths))
                link.start()
                say(f"MQTT to {mqtt.broker}: results on {mqtt.base}/<recipe>/result, triggers on {mqtt.command_topic}")
            if self.serve is not None:
                # the operator's page: counts every result, draws inspected jobs (the station closes it)
                views = StationViews(station.source.name if station.source is not None else TRIGGER_IMAGES, log=say)
                station.add_publisher(views)
                station.add_watcher(views)
                resend = mqtt_out.resend if mqtt_out is not None else None
                server = StationServer(station, *parse_serve(self.serve), metrics, views=views, paths=paths,
                                       clock=clock, resend=resend)  # fmt: skip
                closing.append(server)
                token = f"?token={server.token}" if server.token else ""
                say(f"serving the operator's page /, POST /trigger, /result/<job id>, /metrics, /healthz, /readyz at "
                    f"{server.address}{token}")  # fmt: skip
            if source is not None and self._camera_triggers:
                closing.append(CameraFeeder(station, source, log=say))  # closed before the station
                say(f"every frame {source.name} sends is a job (via camera)")
            if items:
                ids = replay(station, items)
                tally.wait_for(len(ids), 60 + len(ids) * ((self.deadline_ms or 10_000) / 1000))
            if self.serve is not None or self.mqtt is not None or self.opcua is not None or self._camera_triggers:
                self._wait_for_stop(lambda: self._say_source_events(say, source))
        finally:
            # Trigger front-ends first (HTTP server, MQTT commands), then the station (it drains its
            # jobs and closes its publishers: events, MQTT spool, OPC UA), then the link and source.
            for thing in reversed(closing):
                thing.close()
            logs.close()
        self._say_source_events(say, source)
        say(tally.line())

    @staticmethod
    def _say_source_events(say: Callable[[str], None], source: Source | None) -> None:
        """The source's lines not yet said (a lost stream, a reconnect, a camera's settings)."""
        while source is not None and source.stats.events:
            say(source.stats.events.popleft())

    def _wait_for_stop(self, every: Callable[[], None] = lambda: None) -> None:
        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                old[sig] = signal.signal(sig, lambda *_: self.stop.set())
        try:
            while not self.stop.wait(0.5):
                every()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
