"""Soak of `clipad station` on the line (issue 25): every trigger gets exactly one result, everywhere.

`clipad station` runs as a process (two calibrated tiny-model recipes, ONNX Runtime CPU) with a
real Mosquitto (persistence on), its OPC UA server, its HTTP server and an events file. A line
controller in this process triggers ``--jobs`` parts at a steady ``--rate``, alternately over
OPC UA (``StartSingleJob``; the station captures the frame from its ``--source`` folder) and
MQTT (the command topic, with an image path); part ids are unique, so results are matched to
triggers by part id. An independent MES subscriber (its own process, persistent session, QoS 1)
logs every result message to a file. Meanwhile, at points spread over the run:

- the broker is stopped with SIGTERM and restarted ``--sigterm`` times (it saves its sessions);
- once it is killed with SIGKILL (``--sigkill``): the MES subscriber goes offline a second before,
  so results the broker acknowledged to the station and queued for the MES are lost with it;
  when broker and MES are back, a reconciliation compares the MES log with the events file
  (after the station's spool has drained) and asks the station to send the missing ones again
  (``POST /mqtt/resend``), counting them;
- the OPC UA client disconnects and connects again ``--reconnects`` times; results finished while
  it was away are fetched with ``GetResultById`` right after it is back.

While the broker is away the controller sends its MQTT triggers over OPC UA instead (it holds
them until the station has every MQTT command it sent, so no command is lost in a killed broker).

Checks (any failure: exit 1): the station ends cleanly on SIGTERM; every part has exactly one
result in the events file, OK or NG; every OPC UA job id returned is that part's; every job has
at most one OPC UA event and, if none (the client was away), a ``GetResultById`` answer with the
same verdict; every job id is in the MES log, the first occurrences in the events file's order
(the re-sent ones apart); the resend found every job it was asked for; zero jobs without a result.

    python scripts/station_soak.py --jobs 20000 --rate 20 --out /tmp/station-soak
    python scripts/station_soak.py --jobs 300 --sigterm 1 --reconnects 1   # the CI version

Needs Mosquitto (/usr/sbin/mosquitto). Random weights: the figures are about the station.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from asyncua import Client
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: the tests' line pieces
from clipad.runtime.station.opcua_model import NAMESPACE  # noqa: E402
from tests.test_station_core import make_recipes  # noqa: E402
from tests.test_station_http import post  # noqa: E402
from tests.test_station_line import StationProcess, metric_samples  # noqa: E402
from tests.test_station_mqtt import Broker, Subscriber, free_port, wait_until  # noqa: E402

STATION = "soak"
COMMANDS = f"clipad/{STATION}/cmd/trigger"
IMAGES = 12  # make_recipes' good images


# -- the recipes and the source ---------------------------------------------------------------


def build_recipes(root: Path) -> Path:
    """The tiny model exported (FP32) and calibrated twice, as tests/test_station_core.make_recipes does."""
    from clipad.core.progress import Tasks
    from clipad.deploy.export import ExportConfig, export
    from clipad.model.loading import TINY_MODEL, WeightSpec, load_model
    from clipad.model.prompts import PROMPT_SETS

    tiny = load_model(WeightSpec(model=TINY_MODEL, random_weights=True, seed=1))
    cfg = ExportConfig(
        category="washer", out=root / "art", prompts=PROMPT_SETS["industrial"], max_batch=4, precision="fp32"
    )
    art = export(tiny, cfg, Tasks(None))
    (root / "recipes").mkdir()
    return make_recipes(SimpleNamespace(root=art.root), root / "recipes")


def source_folder(recipes: Path, folder: Path, frames: int) -> Path:
    """``frames`` names (hard links to the recipes' good images) for the station's folder source:
    each OPC UA trigger captures the next one."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(frames):
        link = folder / f"{k:06d}.png"
        if not link.exists():
            os.link(recipes / "good" / f"part{k % IMAGES:02d}.png", link)
    return folder


# -- the line around the station --------------------------------------------------------------


class Tail:
    """The complete lines appended to a file since the last call (JSON decoded, or raw)."""

    def __init__(self, path: Path, raw: bool = False):
        self.path, self.raw, self.offset = path, raw, 0

    def new(self) -> list[Any]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        lines = data[:end].decode().splitlines()
        return lines if self.raw else [json.loads(x) for x in lines]


class Events:
    """The station's events file, read as it grows: results by part id and in file order."""

    def __init__(self, path: Path):
        self.tail = Tail(path)
        self.order: list[dict] = []
        self.by_part: dict[str, list[dict]] = {}
        self.lock = threading.Lock()

    def poll(self) -> Events:
        with self.lock:
            for rec in self.tail.new():
                if rec.get("late"):
                    continue  # a verdict after its TIMEOUT: logged, never a job's answer
                self.order.append(rec)
                self.by_part.setdefault(rec["part_id"], []).append(rec)
        return self


class Mes:
    """The MES: this script run with ``--mes-port`` as its own process (a persistent-session QoS 1
    subscriber on ``clipad/#`` logging ``topic<TAB>job id`` per result message to ``log``)."""

    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log
        self.tail = Tail(log, raw=True)
        self.ids: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--mes-port", str(self.port), "--mes-log", str(self.log)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the MES subscriber did not start: {line!r}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None

    def poll(self) -> list[str]:
        self.ids.extend(line.split("\t")[1] for line in self.tail.new())
        return self.ids


def mes_main(port: int, log: Path) -> None:
    """The MES process: the tests' Subscriber, its log appended to ``log`` (flushed per message,
    before paho acknowledges it) until SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out = log.open("a", buffering=1)

    class FileLog(list):
        def append(self, item: tuple[str, bytes, bool]) -> None:
            topic, payload, _ = item
            if topic.endswith("/result"):
                out.write(f"{topic}\t{json.loads(payload)['job_id']}\n")

    sub = Subscriber(port, client_id="mes", topic="clipad/#")
    sub.log = FileLog()
    sub.wait_ready()
    print("ready", flush=True)
    stop.wait()
    sub.close()
    out.close()


class Plc:
    """The line controller's MQTT client (commands only), connected whenever the broker is up."""

    def __init__(self, port: int):
        self.up = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="plc")
        c.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # float seconds work
        c.on_connect = lambda *_: self.up.set()
        c.on_disconnect = lambda *_: self.up.clear()
        c.connect_async("127.0.0.1", port)
        c.loop_start()
        self.client = c

    def trigger(self, part: str, image: str) -> None:
        self.client.publish(COMMANDS, json.dumps({"part_id": part, "image": image}), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the OPC UA side --------------------------------------------------------------------------


class OpcUa:
    """The PLC's OPC UA client: starts jobs, receives the ResultReady events (job id -> verdicts),
    and after each (re)connect fetches the results it missed while away."""

    def __init__(self, url: str):
        self.url = url
        self.events: dict[str, list[str]] = {}
        self.fetched: dict[str, str] = {}
        self.client: Client | None = None

    def event_notification(self, event: Any) -> None:
        self.events.setdefault(str(event.JobId), []).append(str(event.Verdict))

    async def connect(self) -> None:
        client = Client(self.url)
        await client.connect()
        idx = await client.get_namespace_index(NAMESPACE)
        vs = await client.nodes.objects.get_child([f"{idx}:VisionSystem"])
        self.start = await vs.get_child([f"{idx}:VisionStateMachine", f"{idx}:AutomaticModeStateMachine"])
        self.manager = await vs.get_child([f"{idx}:ResultManagement"])
        self.idx = idx
        event_type = await client.nodes.root.get_child(
            ["0:Types", "0:EventTypes", "0:BaseEventType", f"{idx}:ResultReadyEventType"]
        )
        sub = await client.create_subscription(20, self)
        await sub.subscribe_events(vs, event_type)
        self.client = client

    async def disconnect(self) -> None:
        if self.client is not None:
            await self.client.disconnect()
            self.client = None

    async def start_job(self, part: str) -> str:
        return str(await self.start.call_method(f"{self.idx}:StartSingleJob", part))

    async def catch_up(self, records: list[dict]) -> int:
        """GetResultById for the results in ``records`` that came without an event; how many."""
        n = 0
        for rec in records:
            if rec["job_id"] not in self.events and rec["job_id"] not in self.fetched:
                fields = await self.manager.call_method(f"{self.idx}:GetResultById", rec["job_id"])
                self.fetched[rec["job_id"]] = str(fields[4])
                n += 1
        return n


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Report:
    jobs: int
    rate: float
    wall_s: float = 0.0
    triggers: dict[str, int] = field(default_factory=dict)  # opcua, mqtt, opcua-for-mqtt (broker away)
    verdicts: dict[str, int] = field(default_factory=dict)
    broker_restarts: list[str] = field(default_factory=list)
    opcua_reconnects: int = 0
    lost_after_ack: int = 0  # found by reconciliation, re-sent
    lost_at: list[int] = field(default_factory=list)  # the first and last lost result's place in the events file
    mes_away: list[int] = field(default_factory=list)  # results in the events file when the MES left, came back
    resent: int = 0
    not_kept: int = 0
    mes_duplicates: int = 0
    opcua_events: int = 0
    opcua_fetched: int = 0
    latency_ms: dict[str, list[float]] = field(default_factory=dict)  # via -> p50, p99, max
    overhead_ms: dict[str, list[float]] = field(default_factory=dict)  # channel -> p50, p99, max (under load)
    rss_mb: list[float] = field(default_factory=list)  # after warm-up, at the end
    failures: list[str] = field(default_factory=list)


def rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def spread(values: list[float]) -> list[float]:
    return [round(float(np.percentile(values, q)), 3) for q in (50, 99)] + [round(max(values), 3)] if values else []


class Soak:
    def __init__(self, a: argparse.Namespace, out: Path, recipes: Path):
        self.a, self.out, self.recipes = a, out, recipes
        self.report = Report(a.jobs, a.rate)
        self.broker = Broker(out / "broker")
        self.http, self.opcua_port = free_port(), free_port()
        self.events = Events(out / "events.jsonl")
        self.trace = out / "trace.jsonl"
        self.mes = Mes(self.broker.port, out / "mes.log")
        self.opcua = OpcUa(f"opc.tcp://127.0.0.1:{self.opcua_port}")
        self.hold_mqtt = threading.Event()  # the broker is (going) away: MQTT triggers go over OPC UA
        self.mqtt_parts: list[str] = []  # appended by the triggering loop, read by the fault thread
        self.fault_thread: threading.Thread | None = None

    def station_args(self) -> list[str]:
        r, o = self.recipes, self.out
        source = source_folder(r, o / "source", self.a.jobs + 100)
        return [
            *("--recipe", f"a={r / 'a'}", "--recipe", f"b={r / 'b'}", "--backend", "onnxruntime", "--device", "cpu"),
            *("--events", str(o / "events.jsonl"), "--trace", str(self.trace), "--serve", f"127.0.0.1:{self.http}"),
            *("--mqtt", f"mqtt://127.0.0.1:{self.broker.port}", "--name", STATION, "--spool", str(o / "spool")),
            *("--opcua", self.opcua.url, "--source", str(source), "--image-root", str(r)),
            *("--deadline-ms", "30000", "--queue", "64"),
        ]

    # -- faults (a thread: the broker takes seconds; the triggers go on) -------------------------
    def mqtt_settled(self) -> bool:
        """Every MQTT command sent so far has its result: none can be lost in the broker."""
        by_part = self.events.poll().by_part
        return all(p in by_part for p in list(self.mqtt_parts))

    def restart_broker(self, sig: signal.Signals) -> None:
        self.hold_mqtt.set()
        wait_until(self.mqtt_settled, 60, "the station's result for every MQTT command sent")
        if sig == signal.SIGKILL:
            self.mes.stop()  # the MES goes offline: results queue for it in the broker, then die with it
            self.report.mes_away.append(len(self.events.poll().order))
            time.sleep(1.0)
        self.broker.stop(sig)
        self.report.broker_restarts.append(sig.name)
        time.sleep(self.a.down_s)  # results go to the spool meanwhile
        self.broker.start()
        if sig == signal.SIGKILL:
            self.mes.start()
            self.report.mes_away.append(len(self.events.poll().order))
        wait_until(self.plc.up.is_set, 30, "the controller's MQTT connection")
        wait_until(lambda: metric_samples(self.http)[("clipad_station_mqtt_up", ())] == 1, 60, "the station's MQTT")
        self.hold_mqtt.clear()
        if sig == signal.SIGKILL:
            time.sleep(2.0)
            self.reconcile()

    def reconcile(self) -> None:
        """Results in the events file that the MES lacks once the spool has drained: re-sent."""
        published = [r["job_id"] for r in self.events.poll().order]
        wait_until(
            lambda: metric_samples(self.http)[("clipad_station_mqtt_spooled", ())] == 0, 60, "the spool to drain"
        )
        time.sleep(1.0)  # broker -> MES
        have = set(self.mes.poll())
        missing = [j for j in published if j not in have]
        if not missing:
            return
        code, answer = post(self.http, {"job_ids": missing}, "/mqtt/resend")
        if code != 200:
            self.report.failures.append(f"POST /mqtt/resend answered {code}: {answer}")
            return
        self.report.lost_after_ack += len(missing)
        self.report.lost_at = [published.index(missing[0]), published.index(missing[-1])]
        self.report.resent += len(answer["resent"])
        self.report.not_kept += len(answer["not_kept"])
        self.resent_ids.update(answer["resent"])
        print(f"reconciliation: {len(missing)} result(s) missing from the MES log, re-sent {len(answer['resent'])}")

    # -- the triggers ----------------------------------------------------------------------------
    async def drive(self) -> None:
        a = self.a
        marks = np.linspace(0, a.jobs, a.sigterm + a.sigkill + 2)[1:-1].astype(int).tolist()
        kinds = [signal.SIGTERM] * a.sigterm
        if a.sigkill:
            kinds.insert(min(2, len(kinds)), signal.SIGKILL)  # the third fault: sessions saved before it
        broker_at = dict(zip(marks, kinds, strict=True))
        reconnect_at = set(np.linspace(0, a.jobs, a.reconnects + 2)[1:-1].astype(int).tolist())
        reconnect_at = {k + max(a.jobs // 20, 1) for k in reconnect_at}  # not on a broker's mark
        t0 = time.monotonic()
        for k in range(a.jobs):
            if k in broker_at:
                if self.fault_thread is not None:
                    await asyncio.to_thread(self.fault_thread.join)
                self.fault_thread = threading.Thread(target=self.restart_broker, args=(broker_at[k],))
                self.fault_thread.start()
            if k in reconnect_at:
                await self.opcua.disconnect()
                await asyncio.sleep(0.5)
                await self.opcua.connect()
                self.report.opcua_reconnects += 1
                await asyncio.sleep(1.0)  # events flow again; what finished meanwhile is fetched
                self.report.opcua_fetched += await self.opcua.catch_up(self.events.poll().order)
            wait = t0 + k / a.rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            part = f"p{k:06d}"
            if k % 2 == 0 or self.hold_mqtt.is_set() or not self.plc.up.is_set():
                via = "opcua" if k % 2 == 0 else "opcua-for-mqtt"
                self.report.triggers[via] = self.report.triggers.get(via, 0) + 1
                self.opcua_jobs[part] = await self.opcua.start_job(part)
            else:
                self.report.triggers["mqtt"] = self.report.triggers.get("mqtt", 0) + 1
                self.mqtt_parts.append(part)
                self.plc.trigger(part, f"good/part{k % IMAGES:02d}.png")
            if self.fault_thread is not None and not self.fault_thread.is_alive():
                self.fault_thread = None
        self.report.wall_s = time.monotonic() - t0
        if self.fault_thread is not None:
            await asyncio.to_thread(self.fault_thread.join)

    async def run(self) -> Report:
        self.opcua_jobs: dict[str, str] = {}
        self.resent_ids: set[str] = set()
        self.broker.start()
        self.mes.start()
        self.plc = Plc(self.broker.port)
        station = StationProcess(self.station_args())
        try:
            station.wait_for("serving the operator")
            await self.opcua.connect()
            await self.warm_up()
            self.report.rss_mb.append(rss(station.proc.pid))
            await self.drive()
            parts = [f"p{k:06d}" for k in range(self.a.jobs)]
            await asyncio.to_thread(
                wait_until, lambda: all(p in self.events.poll().by_part for p in parts), 120, "every part's result"
            )
            await asyncio.to_thread(self.reconcile)  # the final one: normally nothing is missing
            await asyncio.sleep(1.0)
            self.report.opcua_fetched += await self.opcua.catch_up(self.events.poll().order)
            all_ids = {r["job_id"] for r in self.events.order}
            await asyncio.to_thread(wait_until, lambda: all_ids <= set(self.mes.poll()), 120, "every result at the MES")
            self.report.rss_mb.append(rss(station.proc.pid))
        finally:
            await self.opcua.disconnect()
            code = station.stop(60)
            self.plc.close()
            self.mes.stop()
            self.broker.stop()
        self.check(station, code)
        return self.report

    async def warm_up(self) -> None:
        """One MQTT command through (the station's command subscription is in place) and one OPC UA job."""
        for i in range(60):
            if self.plc.up.is_set():
                self.plc.trigger(f"warm-mqtt-{i}", "good/part00.png")
            await asyncio.sleep(0.5)
            if any(p.startswith("warm-mqtt") for p in self.events.poll().by_part):
                break
        self.opcua_jobs["warm-opcua"] = await self.opcua.start_job("warm-opcua")
        await asyncio.to_thread(wait_until, lambda: "warm-opcua" in self.events.poll().by_part, 30, "a first result")

    # -- the checks --------------------------------------------------------------------------
    def check(self, station: StationProcess, code: int) -> None:
        r, fail = self.report, self.report.failures.append
        self.events.poll()
        order = self.events.order
        if code != 0 or any("Traceback" in x for x in station.lines):
            fail(f"the station ended with {code}:\n" + "\n".join(station.lines[-20:]))
        summary = [x for x in station.lines if x.startswith("summary: ")]
        if not summary or not summary[-1].startswith(f"summary: {len(order)} jobs"):
            fail(f"the station's summary does not count {len(order)} jobs: {summary}")
        parts = [f"p{k:06d}" for k in range(self.a.jobs)]
        for part in parts:
            n = len(self.events.by_part.get(part, []))
            if n != 1:
                fail(f"part {part} has {n} results in the events file")
        ids = [rec["job_id"] for rec in order]
        if len(set(ids)) != len(ids):
            fail(f"{len(ids) - len(set(ids))} job id(s) twice in the events file")
        r.verdicts = dict(Counter(rec["verdict"] for rec in order))
        if set(r.verdicts) - {"OK", "NG"}:
            fail(f"results other than OK/NG: {dict(r.verdicts)}")
        for part, job in self.opcua_jobs.items():
            got = self.events.by_part.get(part, [{}])[0].get("job_id")
            if got != job:
                fail(f"StartSingleJob({part}) answered job {job}, the events file says {got}")
        # OPC UA: at most one event per job; without one, GetResultById answered the same verdict
        for rec in order:
            ev, fetched = self.opcua.events.get(rec["job_id"], []), self.opcua.fetched.get(rec["job_id"])
            if len(ev) > 1:
                fail(f"job {rec['job_id']}: {len(ev)} OPC UA events")
            if ev and ev[0] != rec["verdict"] or not ev and fetched != rec["verdict"]:
                fail(f"job {rec['job_id']}: OPC UA event {ev}, fetched {fetched}, events file {rec['verdict']}")
        r.opcua_events = sum(len(v) for v in self.opcua.events.values())
        # MES: every job, first occurrences in the events file's order (the re-sent ones apart)
        log = self.mes.poll()
        r.mes_duplicates = len(log) - len(set(log))
        missing = set(ids) - set(log)
        if missing:
            fail(f"{len(missing)} job(s) never reached the MES, e.g. {sorted(missing)[:3]}")
        first = [j for j in dict.fromkeys(log) if j not in self.resent_ids]
        expected = [j for j in ids if j not in self.resent_ids]
        if first != expected:
            at = next((i for i, (x, y) in enumerate(zip(first, expected, strict=False)) if x != y), None)
            fail(f"the MES log's order differs from the events file's at position {at}")
        if r.not_kept:
            fail(f"{r.not_kept} missing result(s) were no longer in the spool")
        if len(r.broker_restarts) != self.a.sigterm + self.a.sigkill:
            fail(f"broker restarts {r.broker_restarts}")
        # figures: latency per trigger source (events file), overhead per channel (trace; under load)
        for via in ("opcua", "mqtt"):
            r.latency_ms[via] = spread([rec["latency_ms"] for rec in order if rec["via"] == via])
        trace = [json.loads(x) for x in self.trace.read_text().splitlines()] if self.trace.exists() else []
        for channel in ("opcua", "mqtt"):
            r.overhead_ms[channel] = spread(
                [t["overhead_ms"] for t in trace if t["channel"] == channel and t["inference_ms"] is not None]
            )


def print_report(r: Report) -> None:
    print(
        f"jobs {r.jobs} at {r.rate:g}/s in {r.wall_s:.0f} s; triggers {dict(r.triggers)}; verdicts {dict(r.verdicts)}"
    )
    print(f"broker restarts {r.broker_restarts}; OPC UA reconnects {r.opcua_reconnects}")
    print(
        f"MQTT: lost by the killed broker after its ack, found by reconciliation {r.lost_after_ack}, "
        f"re-sent {r.resent}, no longer kept {r.not_kept}; duplicates at the MES {r.mes_duplicates}"
    )
    if r.lost_at:
        print(f"  lost: results {r.lost_at[0]}..{r.lost_at[1]} of the events file; MES away {r.mes_away}")
    print(f"OPC UA: events {r.opcua_events}, fetched by id after reconnects {r.opcua_fetched}")
    for via, v in r.latency_ms.items():
        print(f"latency, {via} triggers (p50, p99, max ms): {v}")
    for channel, v in r.overhead_ms.items():
        print(f"overhead under load and through the broker's outages, {channel} (p50, p99, max ms): {v}")
    print(f"station RSS after warm-up and at the end: {[round(x, 1) for x in r.rss_mb]} MB")
    print("checks: " + ("all passed" if not r.failures else f"{len(r.failures)} FAILED"))
    for f in r.failures[:20]:
        print(f"  FAILED: {f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=20.0, help="triggers per second")
    ap.add_argument("--sigterm", type=int, default=3, help="broker restarts after SIGTERM")
    ap.add_argument("--sigkill", type=int, default=1, help="broker restarts after SIGKILL (0 or 1)")
    ap.add_argument("--reconnects", type=int, default=2, help="OPC UA client reconnects")
    ap.add_argument("--down-s", type=float, default=2.0, help="seconds the broker stays away each time")
    ap.add_argument("--recipes", type=Path, help="make_recipes' folder (a/, b/, good/); default: built")
    ap.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    ap.add_argument("--mes-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mes-log", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.mes_port is not None:
        mes_main(a.mes_port, a.mes_log)
        return
    if a.sigkill not in (0, 1) or a.jobs < 10:
        ap.error("--sigkill is 0 or 1; --jobs at least 10")
    logging.getLogger("asyncua").setLevel(logging.ERROR)  # session and subscription revisions are noise here
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        recipes = a.recipes or build_recipes(out / "model")
        report = asyncio.run(Soak(a, out, recipes).run())
    print_report(report)
    if a.json:
        a.json.write_text(json.dumps(asdict(report), indent=1))
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
