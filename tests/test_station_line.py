"""`clipad station` as a process on the line: a real Mosquitto, an MQTT subscriber for the MES,
an asyncua client for the PLC and an HTTP client, all triggering the same station (the tiny
model's calibrated export); every job has exactly one result in the events file, on MQTT and
over OPC UA; /metrics shows the channels; SIGTERM ends it cleanly with "offline" published."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as paho
import pytest
from asyncua import Client
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from prometheus_client.parser import text_string_to_metric_families

from clipad.runtime.station.opcua_model import NAMESPACE
from tests.test_station_core import make_recipes, noise_png
from tests.test_station_http import call, post
from tests.test_station_mqtt import MOSQUITTO, Broker, Subscriber, free_port, wait_until

pytestmark = pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="Mosquitto is not installed (apt mosquitto)")


@pytest.fixture(scope="module")
def root(art, tmp_path_factory):
    return make_recipes(art, tmp_path_factory.mktemp("line"))


class StationProcess:
    """`python -m clipad station ...` with its stderr collected line by line."""

    def __init__(self, args: list[str]):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clipad", "station", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if text in line:
                    return line
            assert self.proc.poll() is None, "station exited early:\n" + "\n".join(self.lines)
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} within {timeout} s:\n" + "\n".join(self.lines))

    def stop(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


async def opcua_jobs(url: str, parts: list[str]) -> list[str]:
    async with Client(url) as client:
        idx = await client.get_namespace_index(NAMESPACE)
        auto = await client.nodes.objects.get_child(
            [f"{idx}:VisionSystem", f"{idx}:VisionStateMachine", f"{idx}:AutomaticModeStateMachine"]
        )
        return [str(await auto.call_method(f"{idx}:StartSingleJob", part)) for part in parts]


async def opcua_results(url: str, job_ids: list[str]) -> dict[str, list]:
    async with Client(url) as client:
        idx = await client.get_namespace_index(NAMESPACE)
        manager = await client.nodes.objects.get_child([f"{idx}:VisionSystem", f"{idx}:ResultManagement"])
        return {j: list(await manager.call_method(f"{idx}:GetResultById", j)) for j in job_ids}


def metric_samples(port: int) -> dict[tuple, float]:
    code, _, text = call(port, "GET", "/metrics")
    assert code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_one_station_answers_http_mqtt_and_opcua_triggers_once_everywhere(root, tmp_path):
    broker = Broker(tmp_path / "broker")
    broker.start()
    mes = Subscriber(broker.port, client_id="mes", topic="clipad/#").wait_ready()
    http_port, opcua_port = free_port(), free_port()
    url = f"opc.tcp://127.0.0.1:{opcua_port}"
    events = tmp_path / "events.jsonl"
    station = StationProcess(
        [
            *("--recipe", f"a={root / 'a'}", "--recipe", f"b={root / 'b'}", "--backend", "onnxruntime"),
            *("--device", "cpu", "--events", str(events), "--serve", f"127.0.0.1:{http_port}"),
            *("--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--name", "line1", "--spool", str(tmp_path / "spool")),
            *("--opcua", url, "--source", str(root / "good"), "--image-root", str(root), "--deadline-ms", "30000"),
        ]
    )
    try:
        station.wait_for("serving the operator")
        assert any(f"OPC UA server at {url} (unsecured channel; sessions: anonymous)" in x for x in station.lines)
        assert any("MQTT to 127.0.0.1" in x and "clipad/line1/cmd/trigger" in x for x in station.lines)
        wait_until(lambda: b"online" in [p for p, _ in mes.statuses("line1")], what="the station's online status")

        http_ids = [post(http_port, {"part_id": f"h{i}", "image": f"good/part0{i}.png"})[1]["job_id"] for i in range(3)]
        code, refused = post(http_port, {"part_id": "h-bad", "image": "/etc/passwd"})
        assert code == 400 and "outside the station's image root" in refused["error"]
        http_ids.append(refused["job_id"])

        plc = paho.Client(CallbackAPIVersion.VERSION2, client_id="plc-mqtt", protocol=MQTTProtocolVersion.MQTTv5)
        plc.connect("127.0.0.1", broker.port)
        plc.loop_start()
        for i in range(3):
            payload = {"part_id": f"m{i}", "recipe": "b", "image_b64": base64.b64encode(noise_png(40 + i)).decode()}
            plc.publish("clipad/line1/cmd/trigger", json.dumps(payload), qos=1).wait_for_publish(5)
        plc.publish("clipad/line1/cmd/trigger", b"not json", qos=1).wait_for_publish(5)
        plc.disconnect()
        plc.loop_stop()

        opcua_ids = asyncio.run(asyncio.wait_for(opcua_jobs(url, ["o0", "o1", "o2"]), 60))
        n = 3 + 1 + 4 + 3

        def records() -> list[dict]:
            return [json.loads(x) for x in events.read_text().splitlines()] if events.exists() else []

        wait_until(lambda: len(records()) >= n, timeout=60, what="every result in the events file")
        time.sleep(0.5)  # nothing more may come
        recs = records()
        by_job = {r["job_id"]: r for r in recs}
        assert len(recs) == n == len(by_job), "one record per job"
        for job_id in [*http_ids, *opcua_ids]:
            assert job_id in by_job
        by_part = {r["part_id"]: r for r in recs}
        for part in ("h0", "h1", "h2", "m0", "m1", "m2", "o0", "o1", "o2"):
            assert by_part[part]["verdict"] in ("OK", "NG"), by_part[part]  # inspected, not refused
        assert by_part["m1"]["recipe"] == "b" and by_part["o1"]["via"] == "opcua" and by_part["h1"]["via"] == "http"
        assert by_part["h-bad"]["verdict"] == "error"
        assert [r["why"] for r in recs if r["via"] == "mqtt" and r["verdict"] == "error"][0].startswith("malformed")

        wait_until(lambda: set(by_job) <= set(mes.job_ids()), timeout=30, what="every result on MQTT")
        answers = asyncio.run(asyncio.wait_for(opcua_results(url, list(by_job)), 60))
        for job_id, fields in answers.items():
            assert fields[1] == job_id and fields[4] == by_job[job_id]["verdict"], (job_id, fields)

        samples = metric_samples(http_port)
        assert samples[("clipad_station_mqtt_up", ())] == 1
        assert samples[("clipad_station_mqtt_delivered_total", ())] == n
        assert samples[("clipad_station_mqtt_spooled", ())] == 0
        assert samples[("clipad_station_opcua_events_total", ())] == n
        assert samples[("clipad_station_source_up", (("source", str(root / "good")),))] == 1
        assert sum(v for (name, _), v in samples.items() if name == "clipad_station_jobs_total") == n
    finally:
        code = station.stop()
        mes.close()
        broker.stop()
    assert code == 0, "\n".join(station.lines)
    assert [p for p, _ in mes.statuses("line1")][-1] == b"offline"  # a clean stop says so itself
    assert any(line.startswith(f"summary: {n} jobs") for line in station.lines), station.lines
    assert not any("Traceback" in line for line in station.lines)
