"""The station's own cost per job on each channel, its deadline and a recipe switch (issue 25's goals).

1. Overhead per job and channel: `clipad station` runs as a process with a real Mosquitto and
   ``--trace``; a line controller here triggers ``--jobs`` jobs on each of HTTP (``POST
   /trigger?wait=1``), MQTT (the command topic; the next after its result reached a subscriber)
   and OPC UA (``StartSingleJob``; the next after its ResultReady event), one at a time, so no
   queueing is counted. The figures are the station's own (``overhead.ChannelClock``, monotonic
   clock): (result published on the trigger's channel - trigger received) - the job's inference
   time; published = the ``?wait=1`` answer written (HTTP), handed to paho (MQTT), the event fired
   (OPC UA). HTTP and MQTT triggers carry an image path; OPC UA triggers capture the frame from
   the station's folder source (reading that file is part of the station's cost).
2. Deadline (in this process, the real backend made to stall): TIMEOUT published - (trigger
   received + deadline), over ``--jobs`` / 4 jobs.
3. Recipe switch (in this process): recipes are loaded and warmed up at start (the load is
   timed); then jobs on recipe a, the first job on recipe b and later ones on b (latency).

    python scripts/station_overhead.py --repeat 3                     # tiny model, built here
    python scripts/station_overhead.py --artifacts ART --images DIR   # any calibrated export

Needs Mosquitto (/usr/sbin/mosquitto). Run it on a machine as idle as you can get.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from station_soak import STATION, OpcUa, Plc, build_recipes, source_folder

from clipad.runtime.station.events import EventsPublisher
from clipad.runtime.station.recipes import RecipeBook, ServeOptions, open_recipe_served
from clipad.runtime.station.records import JobResult, Trigger
from clipad.runtime.station.station import Station, StationConfig
from tests.test_station_http import post
from tests.test_station_line import StationProcess
from tests.test_station_mqtt import Broker, Subscriber, free_port, wait_until

CPU = ServeOptions("onnxruntime", "cpu", "fp32")


def figures(values: list[float]) -> str:
    p50, p99 = np.percentile(values, 50), np.percentile(values, 99)
    return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(values):.2f} ms (n={len(values)})"


# -- 1. overhead per channel, `clipad station` as a process ------------------------------------


async def channels(recipes: Path, out: Path, jobs: int) -> dict[str, dict[str, list[float]]]:
    """Run the station, trigger ``jobs`` jobs one at a time on each channel; the trace's figures
    by trigger channel: {via: {"overhead": [...], "inference": [...]}} (inspected jobs only)."""
    broker = Broker(out / "broker")
    broker.start()
    http, url = free_port(), f"opc.tcp://127.0.0.1:{free_port()}"
    trace = out / "trace.jsonl"
    station = StationProcess(
        [
            *("--recipe", f"a={recipes / 'a'}", "--backend", "onnxruntime", "--device", "cpu"),
            *("--trace", str(trace), "--serve", f"127.0.0.1:{http}", "--deadline-ms", "30000"),
            *("--mqtt", f"mqtt://127.0.0.1:{broker.port}", "--name", STATION, "--spool", str(out / "spool")),
            *("--opcua", url, "--source", str(source_folder(recipes, out / "source", jobs + 10))),
            *("--image-root", str(recipes), "--events", str(out / "events.jsonl")),
        ]
    )
    mes = Subscriber(broker.port, client_id="overhead-sub", topic=f"clipad/{STATION}/+/result")
    plc, opcua = Plc(broker.port), OpcUa(url)
    try:
        station.wait_for("serving the operator")
        mes.wait_ready()
        wait_until(plc.up.is_set, 30, "the controller's MQTT connection")
        await opcua.connect()
        for k in range(jobs):
            post(http, {"part_id": f"h{k}", "image": f"good/part{k % 12:02d}.png"}, "/trigger?wait=1")
        for k in range(-5, jobs):  # the first ones also wait for the station's command subscription
            n = len(mes.log)
            plc.trigger(f"m{k}", f"good/part{k % 12:02d}.png")
            deadline = time.monotonic() + (2 if k < 0 else 30)
            while len(mes.log) == n and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
        for k in range(jobs):
            job = await opcua.start_job(f"o{k}")
            while job not in opcua.events:
                await asyncio.sleep(0.001)
    finally:
        await opcua.disconnect()
        plc.close()
        mes.close()
        station.stop(60)
        broker.stop()
    got: dict[str, dict[str, list[float]]] = {}
    for line in trace.read_text().splitlines():
        t = json.loads(line)
        if t["channel"] == t["via"] and t["inference_ms"] is not None:
            fig = got.setdefault(t["via"], {"overhead": [], "inference": []})
            fig["overhead"].append(t["overhead_ms"])
            fig["inference"].append(t["inference_ms"])
    return got


# -- 2. deadline and 3. recipe switch, in this process ------------------------------------------


class Stamps:
    """The last publisher: when each result reached it (monotonic seconds)."""

    def __init__(self):
        self.at: dict[str, float] = {}
        self.results: dict[str, JobResult] = {}
        self.cond = threading.Condition()

    def publish(self, result: JobResult) -> None:
        with self.cond:
            self.at[result.job_id], self.results[result.job_id] = time.monotonic(), result
            self.cond.notify_all()

    def close(self) -> None:
        pass

    def wait(self, job_id: str) -> JobResult:
        with self.cond:
            self.cond.wait_for(lambda: job_id in self.at, 60)
            return self.results[job_id]


class Stallable:
    """The real backend, made to stall ``stall["s"]`` seconds per call on demand."""

    def __init__(self, real, stall: dict[str, float]):
        self.real, self.stall = real, stall

    def __call__(self, images):
        time.sleep(self.stall["s"])
        return self.real(images)

    def describe(self) -> str:
        return self.real.describe()

    def close(self) -> None:
        self.real.close()


def deadline_and_switch(recipes: Path, images: list[Path], jobs: int, events: Path) -> None:
    stall = {"s": 0.0}

    def opener(folder: Path, options: ServeOptions):
        served = open_recipe_served(folder, options)
        served.backend = Stallable(served.backend, stall)
        return served

    t0 = time.perf_counter()
    book = RecipeBook.load([f"a={recipes / 'a'}"], options=CPU, opener=opener)
    load_a = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    book.prepare("b", recipes / "b")
    load_b = (time.perf_counter() - t0) * 1000
    print(f"recipe load at start (hash check, model load, one warm-up inference): a {load_a:.0f} ms, b {load_b:.0f} ms")
    try:
        stamps = Stamps()
        station = Station(book, [EventsPublisher(events), stamps], StationConfig())
        lat: dict[str, list[float]] = {"a": [], "b": []}
        try:
            for recipe in ("a", "b"):
                for k in range(max(jobs // 4, 10)):
                    job = station.submit(
                        Trigger("replay", part_id=str(k), recipe=recipe, image=images[k % len(images)])
                    )
                    lat[recipe].append(stamps.wait(job).latency_ms)
        finally:
            station.close()
        print(
            f"recipe switch, latency: a first {lat['a'][0]:.2f} ms, a later p50 {np.median(lat['a'][1:]):.2f} ms; "
            f"b first {lat['b'][0]:.2f} ms, b later p50 {np.median(lat['b'][1:]):.2f} ms, max {max(lat['b'][1:]):.2f}"
        )

        deadline_ms = 50.0
        stall["s"] = 0.2
        stamps = Stamps()
        station = Station(book, [EventsPublisher(events), stamps], StationConfig(deadline_ms=deadline_ms, queue=1))
        try:
            late_by = []
            for k in range(max(jobs // 4, 10)):
                job = station.submit(Trigger("replay", part_id=str(k), image=images[k % len(images)]))
                result = stamps.wait(job)
                assert result.received is not None and result.verdict.value == "timeout", result
                late_by.append((stamps.at[job] - result.received) * 1000 - deadline_ms)
                station.room(5)  # the stalled job is still in the worker; the next waits for room
                while station.state != "ready":
                    time.sleep(0.005)
            print(f"TIMEOUT published after the {deadline_ms:g} ms deadline by: {figures(late_by)}")
        finally:
            station.close()
    finally:
        book.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", type=Path, help="make_recipes' folder (a/, b/, good/); default: the tiny model built")
    ap.add_argument("--artifacts", type=Path, help="instead: one calibrated export (used as recipes a and b)")
    ap.add_argument("--images", type=Path, help="with --artifacts: a folder of at least 12 images")
    ap.add_argument("--jobs", type=int, default=200, help="jobs per channel")
    ap.add_argument("--repeat", type=int, default=1, help="runs of the channel measurement (the spread)")
    a = ap.parse_args()
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        recipes = a.recipes
        if a.artifacts is not None:
            recipes = out / "recipes"
            (recipes / "good").mkdir(parents=True)
            for name in ("a", "b"):
                (recipes / name).symlink_to(a.artifacts.resolve())
            for i, image in enumerate(sorted(a.images.iterdir())[:12]):
                shutil.copy(image, recipes / "good" / f"part{i:02d}.png")
        elif recipes is None:
            recipes = build_recipes(out / "model")
        for run in range(a.repeat):
            got = asyncio.run(channels(recipes, out / f"run{run}", a.jobs))
            for via in ("http", "mqtt", "opcua"):
                f = got.get(via)
                if f:
                    print(
                        f"run {run + 1}, overhead, {via}: {figures(f['overhead'])}; inference {figures(f['inference'])}"
                    )
            print(f"load average: {os.getloadavg()}")
        images = sorted((recipes / "good").iterdir())
        deadline_and_switch(recipes, images, a.jobs, out / "events.jsonl")


if __name__ == "__main__":
    main()
