"""The station's MQTT side (paho-mqtt 2.x, MQTT 5): results out, triggers in, station status.

Topics (``<root>`` is ``MqttOptions.topic_root``, "clipad" by default; ``<station>`` and
``<recipe>`` are names, with ``/ + #`` and NUL replaced by ``_`` so that each is one topic level):

- ``<root>/<station>/<recipe>/result``: one message per job result, QoS 1, not retained; the
  payload is ``JobResult.to_json()`` as compact JSON (UTF-8). Delivered at least once and in job
  order (a broker restart may repeat a few: consumers key results by ``job_id``).
- ``<root>/<station>/status``: ``online`` (retained, QoS 1) on every connect; the connection's
  last will is ``offline`` (retained, QoS 1), which the broker publishes when the station's
  connection dies without a clean disconnect; a clean shutdown publishes ``offline`` itself.
- ``<root>/<station>/cmd/trigger``: commands, subscribed with QoS 1. The payload is a trigger
  payload (``trigger_payload``), e.g. ``{"part_id": "A17", "recipe": "washer", "image_b64": ...}``.
  Each command becomes one ``Trigger(via="mqtt")`` handed to ``StationPort.submit``; a malformed
  one (or one over ``max_command_mib``) is refused, still gets its job and its ERROR result, and
  one line to the operator.

Order and delivery (``MqttPublisher``): each result is appended to the disk spool (fsynced,
``clipad.runtime.station.spool``) before it goes to the network, and leaves the spool only on the
broker's PUBACK. ``publish`` only queues the result, so the station waits on neither disk nor
network: a sender thread writes what has queued with one fsync (a group commit), then hands the
spooled records to paho in spool order, at most ``max_inflight`` unacknowledged at a time (paho's
own in-flight window is the same, so paho never queues behind it). When the connection drops,
paho keeps the unacknowledged ones and resends them first, in order, on reconnect; the sender
hands nothing new until those are acknowledged, so a new record can never overtake a resent one.
While the broker is away, records accumulate in the spool (bounded: the oldest undelivered are
dropped, counted, reported); a spool left by a stopped station is resent at its next start.

The connection (``MqttLink``) is MQTT 5 with a clean start only on the station's first connect
and a session that outlives a broker restart by ``session_expiry_s``, so commands published during
a short outage are delivered at reconnect, while a restarted station does not execute commands
queued while it was down. Reconnects back off from ``reconnect_min_s`` to ``reconnect_max_s``.
"""

from __future__ import annotations

import os
import queue
import re
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from clipad.core.errors import ClipadError
from clipad.core.redaction import redact
from clipad.runtime.station.records import JobResult, StationPort
from clipad.runtime.station.spool import Spool, payload_bytes
from clipad.runtime.station.trigger_payload import ImagePaths, trigger_from_payload

if TYPE_CHECKING:
    from clipad.runtime.station.overhead import ChannelClock

Log = Callable[[str], None]

_NOT_A_LEVEL = re.compile(r"[/+#\x00]")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def topic_level(name: str) -> str:
    """``name`` as one topic level: ``/``, ``+``, ``#`` and NUL replaced by ``_`` (never empty)."""
    return _NOT_A_LEVEL.sub("_", name) or "_"


@dataclass(frozen=True)
class MqttOptions:
    """How the station reaches its broker. Checked on construction (a ``ClipadError`` names the
    problem on one line). The password is never held here: ``password_file`` (a file whose first
    line is the password) or ``password_env`` (the name of an environment variable) says where
    to read it when connecting, so the options can be printed and logged.

    ``host``/``port``: the broker (1883, or 8883 with TLS by convention); ``station``: this
    station's name in the topics; ``client_id``: the MQTT client id (default ``clipad-<station>``;
    unique per broker); ``ca_file``: turns TLS on, verifying the broker against this CA bundle
    (``tls`` alone: the system's CAs); ``cert_file``/``key_file``: a client certificate;
    ``tls_insecure``: skip the host name check (never by default); ``keepalive_s``: seconds;
    ``spool_dir``: the spool folder; ``spool_max_records``/``spool_max_mib``: its bound on
    undelivered results; ``spool_keep_delivered``: delivered results kept for reconciliation;
    ``max_inflight``: unacknowledged results on the wire; ``session_expiry_s``: how long the broker
    keeps the station's session (subscriptions, queued commands) across a disconnect;
    ``max_command_mib``: the largest command payload accepted."""

    station: str
    spool_dir: Path
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str | None = None
    topic_root: str = "clipad"
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    keepalive_s: int = 30
    spool_max_records: int = 100_000
    spool_max_mib: float = 64.0
    spool_keep_delivered: int = 10_000
    spool_fsync: bool = True
    max_inflight: int = 20
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    session_expiry_s: int = 300
    max_command_mib: float = 16.0

    def __post_init__(self) -> None:
        if not self.station or not self.topic_root:
            raise ClipadError("MQTT: the station name and the topic root must not be empty")
        if _NOT_A_LEVEL.search(self.station):
            raise ClipadError(f"MQTT: station name {self.station!r} must be one topic level (no / + # or NUL)")
        if "+" in self.topic_root or "#" in self.topic_root or self.topic_root.strip("/") != self.topic_root:
            raise ClipadError(f"MQTT: topic root {self.topic_root!r} must be plain levels (no + #, no outer /)")
        if not 0 < self.port < 65536:
            raise ClipadError(f"MQTT: port {self.port} is not in 1..65535")
        if self.password_file is not None and self.password_env is not None:
            raise ClipadError("MQTT: give the password as a file or as an environment variable, not both")
        if (self.password_file is not None or self.password_env is not None) and not self.username:
            raise ClipadError("MQTT: a password needs a user name")
        if self.password_file is not None and not self.password_file.is_file():
            raise ClipadError(f"MQTT: password file {self.password_file} not found")
        for name, path in (("CA", self.ca_file), ("client certificate", self.cert_file), ("key", self.key_file)):
            if path is not None and not path.is_file():
                raise ClipadError(f"MQTT: {name} file {path} not found")
        if self.key_file is not None and self.cert_file is None:
            raise ClipadError("MQTT: a client key needs its certificate (cert_file)")
        checks = (
            (self.keepalive_s >= 5, "keepalive_s must be at least 5"),
            (self.spool_max_records >= 1 and self.spool_max_mib > 0, "the spool bound must be positive"),
            (self.spool_keep_delivered >= 0, "spool_keep_delivered must not be negative"),
            (1 <= self.max_inflight <= 1000, "max_inflight must be in 1..1000"),
            (0 < self.reconnect_min_s <= self.reconnect_max_s, "reconnect delays must be 0 < min <= max"),
            (self.session_expiry_s >= 0, "session_expiry_s must not be negative"),
            (self.max_command_mib > 0, "max_command_mib must be positive"),
        )
        for ok, why in checks:
            if not ok:
                raise ClipadError(f"MQTT: {why}")

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    @property
    def client_name(self) -> str:
        return self.client_id or f"clipad-{self.station}"

    @property
    def broker(self) -> str:
        """``host:port`` for messages (redacted, in case a host was given as a URL)."""
        return redact(f"{self.host}:{self.port}")

    def password(self) -> str | None:
        """The password from its file or environment variable (None without one); the message of
        a failure names the source, never the value."""
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ClipadError(f"MQTT: environment variable {self.password_env} (the password) is not set")
            return value
        if self.password_file is not None:
            try:
                text = self.password_file.read_text()
            except OSError as err:
                raise ClipadError(f"MQTT: cannot read password file {self.password_file}: {err.strerror}") from None
            return text.splitlines()[0] if text else ""
        return None

    # -- topics --------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"{self.topic_root}/{self.station}"

    def result_topic(self, recipe: str) -> str:
        return f"{self.base}/{topic_level(recipe)}/result"

    @property
    def status_topic(self) -> str:
        return f"{self.base}/status"

    @property
    def command_topic(self) -> str:
        return f"{self.base}/cmd/trigger"


ONLINE, OFFLINE = b"online", b"offline"
MAX_TIMED = 100_000  # results waiting for their overhead figure (the spool's default bound)


class MqttLink:
    """The station's one connection to the broker, shared by ``MqttPublisher`` and
    ``MqttCommands``: authentication, TLS, the last will, reconnects, and one line to the operator
    per connection event (lost, unreachable, refused, back). ``start`` connects in the background
    (a broker that is down is retried, never fatal); ``close`` publishes ``offline`` and
    disconnects. Listeners run on paho's network thread and must return quickly."""

    def __init__(self, options: MqttOptions, log: Log = _stderr) -> None:
        self.options, self._log = options, log
        password = options.password()  # read now: a missing secret is a start-up error, not a retry loop
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=options.client_name, protocol=MQTTProtocolVersion.MQTTv5
        )
        # One window for paho and the sender: paho never queues a result behind its own limit.
        client.max_inflight_messages_set(options.max_inflight)
        # paho's delays are typed int but used as float seconds (short delays keep tests fast).
        client.reconnect_delay_set(cast(int, options.reconnect_min_s), cast(int, options.reconnect_max_s))
        client.will_set(options.status_topic, OFFLINE, qos=1, retain=True)
        if options.username:
            client.username_pw_set(options.username, password)
        if options.uses_tls:
            try:
                client.tls_set(
                    ca_certs=None if options.ca_file is None else str(options.ca_file),
                    certfile=None if options.cert_file is None else str(options.cert_file),
                    keyfile=None if options.key_file is None else str(options.key_file),
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (ssl.SSLError, OSError) as err:
                raise ClipadError(f"MQTT: TLS files unusable: {err}") from None
            client.tls_insecure_set(options.tls_insecure)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        self.client = client
        self.connected = False
        self.on_up: list[Callable[[], None]] = []
        self.on_down: list[Callable[[], None]] = []
        self.on_ack: list[Callable[[int, ReasonCode], None]] = []
        self.on_suback: list[Callable[[int, list[ReasonCode]], None]] = []
        self._trouble: str | None = None  # the last problem reported (one line per episode)
        self._ever_connected = False
        self._started = self._closed = False

    def log(self, line: str) -> None:
        self._log(redact(line))

    def _report(self, trouble: str, line: str) -> None:
        """One line per episode: the same trouble again (a retry) stays quiet."""
        if trouble != self._trouble:
            self._trouble = trouble
            self.log(line)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.options.session_expiry_s
        self.client.connect_async(
            self.options.host,
            self.options.port,
            self.options.keepalive_s,
            clean_start=paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        self.client.loop_start()

    def close(self, timeout: float = 2.0) -> None:
        """Publish ``offline`` (retained) when connected, disconnect, stop the network thread."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        if self.connected:
            info = self.client.publish(self.options.status_topic, OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                pass  # the connection went meanwhile: the broker publishes the will instead
        self.client.disconnect()
        self.client.loop_stop()
        self.connected = False

    # -- paho callbacks (network thread) -------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        opts = self.options
        if reason.is_failure:
            user = f" (user {opts.username!r})" if opts.username else " (no user name given)"
            # 0x86 bad user name or password, 0x87 not authorized, 0x8C bad authentication method
            hint = "; check the user name and password" if reason.value in (0x86, 0x87, 0x8C) else ""
            self._report(
                f"refused {reason}",
                f"error: MQTT broker {opts.broker} refused the connection: {reason}{user}{hint}; "
                "results are spooled, retrying",
            )
            return
        self.connected = True
        client.publish(opts.status_topic, ONLINE, qos=1, retain=True)
        if self._trouble is not None or not self._ever_connected:
            again = "reconnected" if self._ever_connected else "connected"
            self.log(f"MQTT {again} to {opts.broker} as {opts.client_name}")
        self._trouble = None
        self._ever_connected = True
        for hook in self.on_up:
            hook()

    def _on_connect_fail(self, _c: paho.Client, _u: Any) -> None:
        # paho calls this inside its ``except OSError``: the error at hand says why.
        err = sys.exc_info()[1]
        if self._trouble == "lost" and not isinstance(err, ssl.SSLError):
            return  # the outage is already reported
        why = f" ({err})" if err is not None else ""
        self._report(
            f"unreachable {type(err).__name__}",
            f"warning: MQTT broker {self.options.broker} unreachable{why}; results are spooled, retrying",
        )

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        was = self.connected
        self.connected = False
        if was and not self._closed:
            broker = self.options.broker
            self._report("lost", f"warning: MQTT connection to {broker} lost ({reason}); results are spooled")
        if was:
            for hook in self.on_down:
                hook()

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        for hook in self.on_ack:
            hook(mid, reason)

    def _on_subscribe(self, _c: paho.Client, _u: Any, mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        for hook in self.on_suback:
            hook(mid, reasons)


@dataclass(frozen=True)
class MqttCounters:
    """The publisher's figures for metrics: ``delivered`` (acknowledged by the broker),
    ``spooled`` / ``spooled_bytes`` (undelivered now), ``dropped`` (pushed out of the spool's
    bound), ``refused`` (a PUBACK with a failure code: the broker will not deliver them),
    ``resent`` (re-queued by ``resend``), ``spool_errors`` (results the disk did not take: kept in
    memory only), ``connected``. Counts since this publisher started."""

    delivered: int
    spooled: int
    spooled_bytes: int
    dropped: int
    refused: int
    resent: int
    spool_errors: int
    connected: bool


@dataclass
class _SenderState:
    inflight: dict[int, int] = field(default_factory=dict)  # paho mid -> spool seq
    resync: bool = False  # reconnected with records in flight: wait for their acks before new ones
    up: bool = False


class MqttPublisher:
    """Results to ``<root>/<station>/<recipe>/result`` through the spool (see the module
    docstring); a ``Publisher`` for the station. ``close`` waits up to ``drain_s`` for the spool
    to empty while connected; whatever is left is sent at the next start. ``clock``: told when
    each result of this run is handed to paho (the station's overhead per channel)."""

    def __init__(self, link: MqttLink, drain_s: float = 2.0, clock: ChannelClock | None = None) -> None:
        opts = link.options
        self.link, self.drain_s, self.clock = link, drain_s, clock
        self._timed: dict[str, JobResult] = {}  # job id -> result, until handed to paho (with a clock)
        self.spool = Spool(
            opts.spool_dir,
            max_records=opts.spool_max_records,
            max_bytes=max(1, int(opts.spool_max_mib * (1 << 20))),
            keep_delivered=opts.spool_keep_delivered,
            fsync=opts.spool_fsync,
        )
        self.delivered = self.dropped = self.refused = self.resent = self.spool_errors = 0
        # Undelivered results, kept exact as a count: +1 when published, -1 when acknowledged,
        # refused or dropped (the spool's own count misses those on their way into it).
        self._undelivered = self.spool.pending_count
        self._count_lock = threading.Lock()
        self._events: queue.SimpleQueue[tuple[str, int, ReasonCode | None]] = queue.SimpleQueue()
        self._dropping = False  # in a drop episode (reported once, summed up when the spool drains)
        self._disk_failing = False
        self._incoming: list[tuple[str, str, bytes]] = []  # published, not yet in the spool
        self._incoming_lock = threading.Lock()
        self._refusals_reported: set[str] = set()
        link.on_up.append(lambda: self._events.put(("up", 0, None)))
        link.on_down.append(lambda: self._events.put(("down", 0, None)))
        link.on_ack.append(lambda mid, reason: self._events.put(("ack", mid, reason)))
        if self.spool.torn_lines:
            link.log(f"warning: MQTT spool {opts.spool_dir}: {self.spool.torn_lines} unreadable line(s) skipped")
        if self.spool.pending_count:
            link.log(f"MQTT spool {opts.spool_dir}: {self.spool.pending_count} result(s) from a previous run to send")
        if link.connected:
            self._events.put(("up", 0, None))
        self._thread = threading.Thread(target=self._run, name="clipad-mqtt-sender", daemon=True)
        self._thread.start()

    # -- the station's thread ------------------------------------------------------------

    def publish(self, result: JobResult) -> None:
        """Queue the result for the spool and wake the sender; returns at once (no disk, no
        network: the sender thread writes and fsyncs the spool, then sends)."""
        topic = self.link.options.result_topic(result.recipe)
        if self.clock is not None:
            with self._incoming_lock:
                self._timed[result.job_id] = result
                if len(self._timed) > MAX_TIMED:  # results dropped from the spool are never handed out
                    del self._timed[next(iter(self._timed))]
        self._queue(result.job_id, topic, payload_bytes(result.to_json()))

    def _queue(self, job_id: str, topic: str, payload: bytes) -> None:
        with self._incoming_lock:
            self._incoming.append((job_id, topic, payload))
        self._settle(+1)
        self._events.put(("wake", 0, None))

    def resend(self, job_ids: Iterable[str]) -> list[str]:
        """Queue again the delivered results of these job ids that the spool still keeps (a
        reconciliation found them missing downstream, e.g. acknowledged by a broker that was then
        killed); they go out after the results already waiting. Returns the job ids re-queued."""
        found = self.spool.find(job_ids)
        for record in found:
            self._queue(record.job_id, record.topic, record.payload)
        self.resent += len(found)
        if found:
            self.link.log(f"MQTT: {len(found)} result(s) re-sent after reconciliation")
        return [r.job_id for r in found]

    def _settle(self, change: int) -> None:
        with self._count_lock:
            self._undelivered += change

    def counters(self) -> MqttCounters:
        return MqttCounters(
            delivered=self.delivered,
            spooled=self._undelivered,
            spooled_bytes=self.spool.pending_bytes,
            dropped=self.dropped,
            refused=self.refused,
            resent=self.resent,
            spool_errors=self.spool_errors,
            connected=self.link.connected,
        )

    def close(self) -> None:
        self._events.put(("stop", 0, None))
        self._thread.join()
        self._write_incoming()  # anything published during the drain: sent at the next start
        self.spool.close()

    # -- the sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        state = _SenderState()
        stop_at: float | None = None
        last_sync = time.monotonic()
        while True:
            try:
                event = self._events.get(timeout=0.2)
                while True:
                    if event[0] == "stop" and stop_at is None:
                        stop_at = time.monotonic() + self.drain_s
                    self._handle(state, *event)
                    event = self._events.get_nowait()
            except queue.Empty:
                pass
            self._write_incoming()
            if state.up and not state.resync:
                self._hand_out(state)
            now = time.monotonic()
            if now - last_sync > 0.2:
                self.spool.sync()
                last_sync = now
            if stop_at is not None and (not state.up or self.spool.pending_count == 0 or now > stop_at):
                return

    def _write_incoming(self) -> None:
        """The published results into the spool, one fsync for all of them (a group commit:
        the station's thread never waits on the disk), before any of them is sent."""
        with self._incoming_lock:
            batch, self._incoming = self._incoming, []
        if not batch:
            return
        appended = self.spool.append_many(batch)
        errors = [a.error for a in appended if a.error is not None]
        if errors:
            self.spool_errors += len(errors)
            if not self._disk_failing:
                self._disk_failing = True
                self.link.log(
                    f"error: MQTT spool cannot write ({errors[0]}); results are kept in memory until delivered"
                )
        elif self._disk_failing:
            self._disk_failing = False
            self.link.log("MQTT spool writes again")
        dropped = [r for a in appended for r in a.dropped]
        if dropped:
            self.dropped += len(dropped)
            self._settle(-len(dropped))
            if not self._dropping:
                self._dropping = True
                opts = self.link.options
                self.link.log(
                    f"warning: MQTT spool full ({opts.spool_max_records} results / {opts.spool_max_mib:g} MiB): "
                    f"dropping the oldest undelivered results (first: job {dropped[0].job_id})"
                )

    def _handle(self, state: _SenderState, kind: str, mid: int, reason: ReasonCode | None) -> None:
        if kind == "up":
            state.up = True
            state.resync = bool(state.inflight)  # paho resends these first; nothing new overtakes them
        elif kind == "down":
            state.up = False
        elif kind == "ack":
            seq = state.inflight.pop(mid, None)
            if seq is None:
                return  # the link's own status messages
            if reason is not None and reason.is_failure:
                self.refused += 1
                if str(reason) not in self._refusals_reported:
                    self._refusals_reported.add(str(reason))
                    self.link.log(f"error: MQTT broker refused a result ({reason}); such results are dropped, counted")
            else:
                self.delivered += 1
            if self.spool.ack(seq) is not None:
                self._settle(-1)
            if not state.inflight:
                state.resync = False
            if self._dropping and self.spool.pending_count == 0:
                self._dropping = False
                self.link.log(f"MQTT spool drained; {self.dropped} result(s) dropped in all while the broker was away")

    def _hand_out(self, state: _SenderState) -> None:
        window = self.link.options.max_inflight
        while len(state.inflight) < window:
            record = self.spool.take_next()
            if record is None:
                return
            try:
                info = self.link.client.publish(record.topic, record.payload, qos=1)
            except ValueError as err:  # a topic or payload paho will not send: it never will
                self.refused += 1
                self.spool.ack(record.seq)
                self._settle(-1)
                self.link.log(f"error: MQTT result of job {record.job_id} not sendable ({err}); dropped, counted")
                continue
            # On MQTT_ERR_NO_CONN paho keeps the message and sends it at reconnect, in order.
            state.inflight[info.mid] = record.seq
            if self.clock is not None:
                with self._incoming_lock:
                    timed = self._timed.pop(record.job_id, None)
                if timed is not None:
                    self.clock.sent("mqtt", timed)


class MqttCommands:
    """Triggers from ``<root>/<station>/cmd/trigger`` (QoS 1, subscribed at every connect) to the
    station. ``submit`` runs on paho's network thread: it must return at once (it does: it hands
    the job to the station's queue)."""

    def __init__(self, link: MqttLink, station: StationPort, paths: ImagePaths | None = None) -> None:
        self.link, self.station, self.paths = link, station, paths or ImagePaths()
        self.received = self.refused = 0
        self.subscribed = threading.Event()  # set at each SUBACK that grants the subscription
        self._max_bytes = int(link.options.max_command_mib * (1 << 20))
        self._sub_mid: int | None = None
        link.client.message_callback_add(link.options.command_topic, self._on_message)
        link.on_up.append(self._subscribe)
        link.on_down.append(self.subscribed.clear)
        link.on_suback.append(self._on_suback)
        if link.connected:
            self._subscribe()

    def _subscribe(self) -> None:
        _, self._sub_mid = self.link.client.subscribe(self.link.options.command_topic, qos=1)

    def _on_suback(self, mid: int, reasons: list[ReasonCode]) -> None:
        if mid != self._sub_mid:
            return
        if reasons and reasons[0].is_failure:
            self.link.log(f"error: MQTT broker refused the command subscription ({reasons[0]}); no MQTT triggers")
        else:
            self.subscribed.set()

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        trigger = trigger_from_payload(bytes(message.payload), "mqtt", self.paths, max_bytes=self._max_bytes)
        self.received += 1
        try:
            job_id = self.station.submit(trigger)
        except Exception as err:  # noqa: BLE001 - paho's thread must survive a station fault
            self.link.log(f"error: MQTT trigger not taken by the station: {type(err).__name__}: {err}")
            return
        if trigger.refused is not None:
            self.refused += 1
            self.link.log(f"warning: MQTT command on {message.topic} refused (job {job_id}): {trigger.refused}")

    def close(self) -> None:
        self.link.client.message_callback_remove(self.link.options.command_topic)
