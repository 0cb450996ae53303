"""The station's MQTT side against a real Mosquitto (started here on a free loopback port, with
persistence) and real paho subscribers with persistent sessions: results on their topics, the
spool through a broker down at start, stopped, killed and restarted, the bound, the last will,
commands, authentication and TLS. The station itself is a minimal double (it records triggers)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

import clipad
from clipad.core.errors import ClipadError
from clipad.runtime.station.mqtt import MqttCommands, MqttLink, MqttOptions, MqttPublisher
from clipad.runtime.station.records import JobResult, StationState, Trigger, Verdict
from clipad.runtime.station.trigger_payload import ImagePaths

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
if os.environ.get("CLIPAD_REQUIRE_MOSQUITTO") == "1":  # CI: a missing broker is a failure, not a skip
    assert os.path.exists(MOSQUITTO), f"CLIPAD_REQUIRE_MOSQUITTO=1 but {MOSQUITTO} is missing"
pytestmark = pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="Mosquitto is not installed (apt mosquitto)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Broker:
    """A Mosquitto process on ``port`` with its own config and persistence folder; ``start``,
    ``stop`` (SIGTERM: it saves its sessions) and ``kill`` (SIGKILL: it saves nothing)."""

    def __init__(self, folder: Path, extra: str = "") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.port = folder, free_port()
        self.conf = folder / "mosquitto.conf"
        anonymous = "" if "allow_anonymous" in extra else "allow_anonymous true\n"
        self.conf.write_text(
            f"user {os.environ.get('USER') or 'root'}\n"  # as root, Mosquitto would switch to its own user
            f"persistence true\npersistence_location {folder}/\nautosave_interval 3600\n"
            f"log_dest file {folder}/mosquitto.log\n"
            f"listener {self.port} 127.0.0.1\n{anonymous}{extra}"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        end = time.monotonic() + 5
        while True:
            assert self.proc.poll() is None, (self.folder / "mosquitto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


class Subscriber:
    """An independent QoS 1 subscriber with a persistent session (clean_session False) that
    re-subscribes at every connect; ``log``: (topic, payload, retain) in arrival order."""

    def __init__(self, port: int, client_id: str = "sub", topic: str = "clipad/#", auth=None, tls_ca=None):
        self.log: list[tuple[str, bytes, bool]] = []
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # float seconds work; fast tests
        if auth:
            c.username_pw_set(*auth)
        if tls_ca:
            c.tls_set(ca_certs=str(tls_ca))
        c.on_connect = self._on_connect
        c.on_subscribe = lambda cl, u, mid, rcs, p: self.subscribed.set()
        c.on_disconnect = self._on_disconnect
        c.on_message = lambda cl, u, m: self.log.append((m.topic, bytes(m.payload), bool(m.retain)))
        self.topic = topic
        c.connect_async("127.0.0.1", port, keepalive=5)
        c.loop_start()
        self.client = c

    def _on_connect(self, client: paho.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        self.connected.set()
        client.subscribe(self.topic, qos=1)

    def _on_disconnect(self, _c: paho.Client, _u: object, _f: object, _rc: object, _p: object) -> None:
        self.connected.clear()
        self.subscribed.clear()

    def wait_ready(self) -> Subscriber:
        wait_until(self.subscribed.is_set, what="the subscriber's SUBACK")
        return self

    def job_ids(self) -> list[str]:
        return [json.loads(p)["job_id"] for t, p, _ in list(self.log) if t.endswith("/result")]

    def statuses(self, station: str = "st1") -> list[tuple[bytes, bool]]:
        return [(p, r) for t, p, r in list(self.log) if t == f"clipad/{station}/status"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def first_seen(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def result(i: int, recipe: str = "washer") -> JobResult:
    return JobResult(
        job_id=f"j{i:05d}",
        part_id=f"p{i}",
        recipe=recipe,
        verdict=Verdict.NG if i % 3 == 0 else Verdict.OK,
        via="mqtt",
        triggered_at=time.time(),
        latency_ms=3.25,
        score=0.25 + i % 5 / 10,
        inference_ms=1.5,
    )


def ids(a: int, b: int) -> list[str]:
    return [f"j{i:05d}" for i in range(a, b)]


class Side:
    """The station's MQTT side as the station wires it: link, publisher, the operator's lines."""

    def __init__(self, tmp_path: Path, port: int, name: str = "st1", spool: str = "spool", **opts) -> None:
        self.lines: list[str] = []
        opts = {"reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "keepalive_s": 5, "client_id": f"clipad-{spool}"} | opts
        self.options = MqttOptions(station=name, spool_dir=tmp_path / spool, port=port, **opts)
        self.link = MqttLink(self.options, log=self.lines.append)
        self.pub = MqttPublisher(self.link)
        self.link.start()

    def lines_with(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def close(self) -> None:
        self.pub.close()
        self.link.close()


@pytest.fixture
def sides():
    opened: list[Side] = []
    yield opened
    for side in opened:
        side.close()


def test_results_arrive_on_their_topics_with_the_result_record(tmp_path, broker, sides):
    sub = Subscriber(broker.port).wait_ready()
    side = Side(tmp_path, broker.port)
    sides.append(side)
    wait_until(lambda: side.link.connected, what="the station's connection")
    sent = [result(0), result(1), result(2, recipe="gear/2+")]
    for r in sent:
        side.pub.publish(r)
    wait_until(lambda: len(sub.job_ids()) == 3, what="3 results")
    got = [(t, json.loads(p), retain) for t, p, retain in sub.log if t.endswith("/result")]
    assert [t for t, _, _ in got] == ["clipad/st1/washer/result"] * 2 + ["clipad/st1/gear_2_/result"]
    assert [p for _, p, _ in got] == [r.to_json() for r in sent]
    assert not any(retain for _, _, retain in got)
    wait_until(lambda: side.pub.counters().delivered == 3, what="the PUBACKs")  # the broker forwards first
    c = side.pub.counters()
    assert (c.delivered, c.spooled, c.dropped, c.connected) == (3, 0, 0, True)
    # The spool on disk: one JSON line per result with its sequence number; the acked pointer follows.
    lines = [
        json.loads(x) for f in sorted((tmp_path / "spool").glob("seg-*.jsonl")) for x in f.read_text().splitlines()
    ]
    assert [(x["seq"], x["job_id"], x["payload"]) for x in lines] == [
        (i + 1, r.job_id, r.to_json()) for i, r in enumerate(sent)
    ]
    acked = tmp_path / "spool" / "acked"
    wait_until(lambda: acked.exists() and json.loads(acked.read_text())["acked_through"] == 3, what="acked file")
    assert side.lines == [f"MQTT connected to 127.0.0.1:{broker.port} as clipad-spool"]
    sub.close()


def test_broker_down_at_start_spools_then_delivers_in_order(tmp_path, broker, sides):
    sub = Subscriber(broker.port).wait_ready()
    broker.stop()  # SIGTERM: the subscriber's persistent session is saved with the broker's state
    side = Side(tmp_path, broker.port)
    sides.append(side)
    wait_until(lambda: side.lines_with("unreachable"), what="the unreachable line")
    slowest = 0.0
    for i in range(30):
        t0 = time.perf_counter()
        side.pub.publish(result(i))
        slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < 0.25, f"publish took {slowest * 1000:.0f} ms with the broker down"
    wait_until(lambda: side.pub.counters().spooled_bytes > 0, what="the spool written")
    c = side.pub.counters()
    assert (c.delivered, c.spooled, c.connected) == (0, 30, False)
    broker.start()
    wait_until(lambda: len(set(sub.job_ids())) == 30, what="the 30 spooled results")
    assert first_seen(sub.job_ids()) == ids(0, 30)
    wait_until(lambda: side.pub.counters().spooled == 0, what="an empty spool")
    assert side.pub.counters().delivered == 30
    assert len(side.lines_with("unreachable")) == 1 and len(side.lines_with("connected to")) == 1
    sub.close()


def test_broker_stopped_and_restarted_mid_run_loses_nothing_and_keeps_order(tmp_path, broker, sides):
    sub = Subscriber(broker.port).wait_ready()
    side = Side(tmp_path, broker.port)
    sides.append(side)
    wait_until(lambda: side.link.connected, what="the station's connection")
    n = 300

    def produce() -> None:
        for i in range(n):
            side.pub.publish(result(i, recipe=("washer", "gear")[i % 2]))
            time.sleep(0.004)

    producer = threading.Thread(target=produce)
    producer.start()
    for _ in range(2):
        time.sleep(0.25)
        broker.stop()
        time.sleep(0.25)
        broker.start()
        wait_until(lambda: side.link.connected, what="the reconnect")  # two outages, not one long one
    producer.join()
    wait_until(lambda: len(set(sub.job_ids())) == n, timeout=15, what=f"{n} results")
    assert first_seen(sub.job_ids()) == ids(0, n)
    wait_until(lambda: side.pub.counters().spooled == 0, what="an empty spool")
    assert side.pub.counters().delivered == n
    assert len(side.lines_with("lost")) == 2 and len(side.lines_with("reconnected")) == 2
    sub.close()


def test_killed_broker_losses_are_found_by_reconciliation_and_resent(tmp_path, broker, sides):
    sub = Subscriber(broker.port, client_id="sub-k").wait_ready()
    side = Side(tmp_path, broker.port)
    sides.append(side)
    for i in range(10):
        side.pub.publish(result(i))
    wait_until(lambda: len(sub.job_ids()) == 10, what="the first 10 results")
    log = list(sub.log)
    sub.close()  # its session (clean_session False) keeps collecting the next results at the broker
    for i in range(10, 20):
        side.pub.publish(result(i))
    wait_until(lambda: side.pub.counters().delivered == 20, what="the broker's PUBACKs")
    broker.kill()  # acknowledged, queued for the absent subscriber, never saved: lost
    for i in range(20, 30):
        side.pub.publish(result(i))
    wait_until(lambda: side.pub.counters().spooled == 10, what="10 spooled results")
    broker.start()
    sub = Subscriber(broker.port, client_id="sub-k").wait_ready()
    wait_until(lambda: side.pub.counters().spooled == 0, what="the spool to drain")
    time.sleep(0.3)  # let the broker forward what it has
    seen = [json.loads(p)["job_id"] for t, p, _ in log + sub.log if t.endswith("/result")]
    missing = [j for j in ids(0, 30) if j not in seen]
    assert set(ids(10, 20)) <= set(missing), "the killed broker was expected to lose the queued results"
    assert side.pub.resend(missing) == missing
    assert side.pub.counters().resent == len(missing)
    wait_until(lambda: not set(missing) - set(sub.job_ids()), what="the re-sent results")
    seen = [json.loads(p)["job_id"] for t, p, _ in log + sub.log if t.endswith("/result")]
    # Every job id at least once; first deliveries in job order, the re-sent ones after, in job order.
    assert first_seen(seen) == [j for j in ids(0, 30) if j not in missing] + missing
    sub.close()


def test_spool_bound_drops_the_oldest_counted_and_reported(tmp_path, broker, sides):
    sub = Subscriber(broker.port).wait_ready()
    broker.stop()
    side = Side(tmp_path, broker.port, spool_max_records=5)
    sides.append(side)
    for i in range(12):
        side.pub.publish(result(i))
    wait_until(lambda: side.pub.counters().dropped == 7, what="the drops")
    assert side.pub.counters().spooled == 5
    full = side.lines_with("spool full")
    assert len(full) == 1 and "j00000" in full[0], side.lines
    broker.start()
    wait_until(lambda: len(sub.job_ids()) >= 5, what="the 5 kept results")
    time.sleep(0.2)
    assert first_seen(sub.job_ids()) == ids(7, 12)
    wait_until(lambda: side.lines_with("drained"), what="the drained line")
    assert "7 result(s) dropped" in side.lines_with("drained")[0]
    sub.close()


def test_a_spool_left_by_a_stopped_station_is_sent_at_the_next_start(tmp_path, broker, sides):
    sub = Subscriber(broker.port).wait_ready()
    broker.stop()
    first = Side(tmp_path, broker.port)
    for i in range(4):
        first.pub.publish(result(i))
    first.close()
    broker.start()
    second = Side(tmp_path, broker.port)
    sides.append(second)
    assert second.lines_with("4 result(s) from a previous run"), second.lines
    second.pub.publish(result(4))
    second.pub.publish(result(5))
    wait_until(lambda: len(set(sub.job_ids())) == 6, what="6 results")
    assert first_seen(sub.job_ids()) == ids(0, 6)
    seqs = [
        json.loads(x)["seq"]
        for f in sorted((tmp_path / "spool").glob("seg-*.jsonl"))
        for x in f.read_text().splitlines()
    ]
    assert seqs == [1, 2, 3, 4, 5, 6]
    sub.close()


def test_a_spool_that_cannot_write_is_reported_and_the_result_still_delivered(tmp_path, broker, sides):
    sub = Subscriber(broker.port).wait_ready()
    side = Side(tmp_path, broker.port)
    sides.append(side)
    side.pub.publish(result(0))
    wait_until(lambda: side.pub.counters().delivered == 1, what="the first result")
    side.pub.spool.segment_records = 1  # the next record opens a new segment: a full device
    (tmp_path / "spool" / "seg-000000000002.jsonl").symlink_to("/dev/full")
    side.pub.publish(result(1))
    side.pub.publish(result(2))
    wait_until(lambda: side.pub.counters().spool_errors == 2, what="the write errors")
    assert len(side.lines_with("spool cannot write")) == 1 and "No space left" in side.lines_with("cannot write")[0]
    wait_until(lambda: len(sub.job_ids()) == 3, what="3 results")
    assert sub.job_ids() == ids(0, 3)
    sub.close()


STATION_SCRIPT = """
import sys, time
from pathlib import Path
from clipad.runtime.station.mqtt import MqttLink, MqttOptions
link = MqttLink(MqttOptions(station="st9", spool_dir=Path(sys.argv[2]), port=int(sys.argv[1])), log=lambda s: None)
link.start()
while not link.connected:
    time.sleep(0.01)
print("up", flush=True)
time.sleep(60)
"""


def test_last_will_offline_when_the_station_dies_online_retained_on_connect(tmp_path, broker, sides):
    sub = Subscriber(broker.port, topic="clipad/+/status").wait_ready()
    env = os.environ | {"PYTHONPATH": str(Path(clipad.__file__).parents[1])}
    cmd = [sys.executable, "-c", STATION_SCRIPT, str(broker.port), str(tmp_path / "s9")]
    station = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
    try:
        assert station.stdout is not None and station.stdout.readline() == b"up\n"
        wait_until(lambda: sub.statuses("st9") == [(b"online", False)], what="online")
        late = Subscriber(broker.port, client_id="late", topic="clipad/+/status").wait_ready()
        wait_until(lambda: late.statuses("st9") == [(b"online", True)], what="the retained online")
        late.close()
    finally:
        station.kill()  # no DISCONNECT: the broker publishes the last will
        station.wait()
    wait_until(lambda: len(sub.statuses("st9")) == 2, what="the last will")
    assert sub.statuses("st9")[1] == (b"offline", False)
    # A clean shutdown says offline itself (no will), retained for whoever looks later.
    side = Side(tmp_path, broker.port)
    wait_until(lambda: (b"online", False) in sub.statuses(), what="st1 online")
    side.close()
    wait_until(lambda: sub.statuses()[-1:] == [(b"offline", False)], what="st1 offline")
    late = Subscriber(broker.port, client_id="late2", topic="clipad/+/status").wait_ready()
    wait_until(lambda: len(late.log) == 2, what="retained statuses")
    assert sorted(late.log) == [("clipad/st1/status", b"offline", True), ("clipad/st9/status", b"offline", True)]
    late.close()
    sub.close()


class StationDouble:
    """A station that takes every trigger and numbers it (all the command side needs)."""

    def __init__(self) -> None:
        self.triggers: list[Trigger] = []

    def submit(self, trigger: Trigger) -> str:
        self.triggers.append(trigger)
        return f"job-{len(self.triggers)}"

    def result(self, job_id: str) -> JobResult | None:
        return None

    @property
    def state(self) -> StationState:
        return "ready"

    @property
    def active_recipe(self) -> str:
        return "washer"

    @property
    def recipes(self) -> list[str]:
        return ["washer", "gear"]


def test_commands_become_triggers_and_malformed_ones_refused_triggers(tmp_path, broker, sides):
    side = Side(tmp_path, broker.port, max_command_mib=0.001)
    sides.append(side)
    station = StationDouble()
    commands = MqttCommands(side.link, station, ImagePaths(tmp_path))
    wait_until(commands.subscribed.is_set, what="the command subscription")
    png = b"\x89PNG\r\n\x1a\n fake image bytes"
    payloads = [
        json.dumps({"part_id": "A1", "recipe": "gear", "image": "a1.png"}).encode(),
        json.dumps({"part_id": 7, "image_b64": base64.b64encode(png).decode()}).encode(),
        b"{}",
        b"not json",
        b"[1, 2]",
        b"\xff\xfe",
        json.dumps({"part_id": "A2", "colour": "red"}).encode(),
        json.dumps({"image_b64": "!!not base64!!"}).encode(),
        json.dumps({"image": "a.png", "image_b64": "AAAA"}).encode(),
        json.dumps({"part_id": True}).encode(),
        json.dumps({"image": "/etc/passwd"}).encode(),
        json.dumps({"image": "../x.png"}).encode(),
        json.dumps({"image_b64": "A" * 2000}).encode(),
    ]
    plc = paho.Client(CallbackAPIVersion.VERSION2, client_id="plc", protocol=MQTTProtocolVersion.MQTTv5)
    plc.connect("127.0.0.1", broker.port)
    plc.loop_start()
    for p in payloads:
        plc.publish("clipad/st1/cmd/trigger", p, qos=1).wait_for_publish(5)
    wait_until(lambda: len(station.triggers) == len(payloads), what="every command's trigger")
    plc.disconnect()
    plc.loop_stop()
    t = station.triggers
    assert all(x.via == "mqtt" for x in t)
    assert (t[0].part_id, t[0].recipe, t[0].image, t[0].refused) == (
        "A1",
        "gear",
        (tmp_path / "a1.png").resolve(),
        None,
    )
    assert (t[1].part_id, t[1].recipe, t[1].image, t[1].refused) == ("7", None, png, None)
    assert (t[2].part_id, t[2].image, t[2].refused) == (None, None, None)
    why = [x.refused for x in t[3:]]
    assert all(why), why
    for text, reason in zip(
        [
            "not JSON",
            "expected a JSON object",
            "not UTF-8",
            "colour",
            "base64",
            "not both",
            "part_id",
            "outside",
            "outside",
            "over",
        ],
        why,
        strict=True,  # fmt: skip
    ):
        assert text in reason, (text, reason)
    refused_lines = side.lines_with("refused")
    assert len(refused_lines) == 10 and "job-4" in refused_lines[0] and commands.refused == 10
    commands.close()


def make_passwords(folder: Path, user: str, password: str) -> Path:
    path = folder / "passwd"
    subprocess.run([MOSQUITTO_PASSWD, "-b", "-c", str(path), user, password], check=True, capture_output=True)
    path.chmod(0o600)
    return path


@pytest.mark.skipif(not os.path.exists(MOSQUITTO_PASSWD), reason="mosquitto_passwd is not installed")
def test_username_password_and_a_wrong_password_in_one_clear_line(tmp_path, sides, monkeypatch):
    folder = tmp_path / "broker"
    folder.mkdir()
    passwd = make_passwords(folder, "station", "s3cret pass")
    broker = Broker(folder, extra=f"allow_anonymous false\npassword_file {passwd}\n")
    broker.start()
    try:
        secret = tmp_path / "pw"
        secret.write_text("s3cret pass\n")
        sub = Subscriber(broker.port, auth=("station", "s3cret pass")).wait_ready()
        good = Side(tmp_path, broker.port, username="station", password_file=secret)
        sides.append(good)
        good.pub.publish(result(0))
        wait_until(lambda: sub.job_ids() == ["j00000"], what="the result")
        monkeypatch.setenv("CLIPAD_TEST_MQTT_PW", "wrong-pass")
        bad = Side(tmp_path, broker.port, spool="spool-bad", username="station", password_env="CLIPAD_TEST_MQTT_PW")
        sides.append(bad)
        bad.pub.publish(result(1))
        wait_until(lambda: bad.lines_with("refused"), what="the refusal")
        time.sleep(1.0)  # several retries (0.1 .. 0.5 s apart): still one line
        assert len(bad.lines) == 1, bad.lines
        assert "refused the connection" in bad.lines[0] and "user 'station'" in bad.lines[0]
        assert "check the user name and password" in bad.lines[0]
        assert not any("wrong-pass" in line or "s3cret" in line for line in bad.lines + good.lines)
        assert (bad.pub.counters().spooled, bad.pub.counters().connected) == (1, False)
        monkeypatch.delenv("CLIPAD_TEST_MQTT_PW")
        with pytest.raises(ClipadError, match="CLIPAD_TEST_MQTT_PW.*not set"):
            MqttLink(
                MqttOptions(station="x", spool_dir=tmp_path / "x", username="u", password_env="CLIPAD_TEST_MQTT_PW")
            )
        sub.close()
    finally:
        for side in sides:
            side.close()
        sides.clear()
        broker.stop()


def test_options_are_checked_in_one_line(tmp_path):
    base: dict[str, Any] = {"station": "st1", "spool_dir": tmp_path}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"station": "a/b"}, "one topic level"),
        ({"topic_root": "plant/#"}, "plain levels"),
        ({"port": 0}, "port"),
        ({"username": "u", "password_file": tmp_path / "none"}, "not found"),
        ({"password_env": "X"}, "needs a user name"),
        ({"ca_file": tmp_path / "ca.pem"}, "CA file"),
        ({"spool_max_records": 0}, "bound"),
    ]
    for bad, text in cases:
        with pytest.raises(ClipadError, match=text) as err:
            MqttOptions(**(base | bad))
        assert "\n" not in str(err.value)
    opts = MqttOptions(station="st1", spool_dir=tmp_path, topic_root="plant/line4")
    assert (opts.result_topic("a/b"), opts.status_topic, opts.command_topic) == (
        "plant/line4/st1/a_b/result",
        "plant/line4/st1/status",
        "plant/line4/st1/cmd/trigger",
    )


def make_certs(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / f"{name}-{x}" for x in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", f"/CN={name} CA")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
        "-extfile", str(ext), "-out", str(cert))  # fmt: skip
    return ca, cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_against_the_brokers_ca_and_a_foreign_ca_in_one_line(tmp_path, sides):
    ca, cert, key = make_certs(tmp_path / "pki", "broker")
    other_ca, _, _ = make_certs(tmp_path / "pki", "other")
    broker = Broker(tmp_path / "broker", extra=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}\n")
    broker.start()
    try:
        sub = Subscriber(broker.port, tls_ca=ca).wait_ready()
        good = Side(tmp_path, broker.port, ca_file=ca)
        sides.append(good)
        good.pub.publish(result(0))
        wait_until(lambda: sub.job_ids() == ["j00000"], what="the result over TLS")
        bad = Side(tmp_path, broker.port, spool="spool-bad", ca_file=other_ca)
        sides.append(bad)
        wait_until(lambda: bad.lines, what="the TLS failure")
        time.sleep(0.5)
        assert len(bad.lines) == 1 and "CERTIFICATE_VERIFY_FAILED" in bad.lines[0], bad.lines
        sub.close()
    finally:
        for side in sides:
            side.close()
        sides.clear()
        broker.stop()
