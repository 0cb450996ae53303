"""The station's own cost per job, and how closely it keeps a deadline (issue 25's goals).

Overhead per job = (result handed to the last publisher - trigger received) - the job's own
inference time, all taken inside the station (monotonic clock): the trigger's ``received`` is
stamped when its request head has arrived (HTTP) or when it is made (replay), and the time of
publication by a publisher placed after the events file and the metrics. The HTTP triggers come
from a client in another process, as a line controller's would. Jobs are sent one at a time
(each after the previous result), so no queueing is counted. The deadline figure: with the
backend stalled, TIMEOUT published - (received + deadline), over ``--jobs`` / 4 jobs.

    python scripts/station_overhead.py --artifacts ART --images DIR [--jobs 200]

ART must be calibrated (`clipad calibrate`); DIR: a few images (they are replayed in a loop).
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from clipad.data.images import list_images
from clipad.runtime.station.events import EventsPublisher
from clipad.runtime.station.http import StationServer
from clipad.runtime.station.metrics import StationMetrics
from clipad.runtime.station.recipes import RecipeBook, ServeOptions, open_recipe_served
from clipad.runtime.station.records import JobResult, Trigger
from clipad.runtime.station.station import Station, StationConfig

CLIENT = """
import http.client, json, sys
port, jobs, images = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
for k in range(jobs):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = json.dumps({"part_id": k, "image_b64": images[k % len(images)]})
    conn.request("POST", "/trigger?wait=1", body=body, headers={"Content-Type": "application/json"})
    print(json.loads(conn.getresponse().read())["job_id"])
    conn.close()
"""


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

    def wait(self, job_id: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: job_id in self.at, 60)


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


class Timed(Station):
    """The station, remembering each trigger's reception time by job id."""

    received: dict[str, float]

    def submit(self, trigger: Trigger) -> str:
        job_id = super().submit(trigger)
        self.received[job_id] = trigger.received
        return job_id


def figures(values: list[float]) -> str:
    return f"p50 {np.percentile(values, 50):.2f} ms, p99 {np.percentile(values, 99):.2f} ms (n={len(values)})"


def measure(art: Path, images: list[Path], jobs: int, events: Path) -> None:
    stall = {"s": 0.0}

    def opener(folder: Path, options: ServeOptions):
        served = open_recipe_served(folder, options)
        served.backend = Stallable(served.backend, stall)
        return served

    book = RecipeBook.load([f"a={art}"], options=ServeOptions("onnxruntime", "cpu", "fp32"), opener=opener)
    metrics, stamps = StationMetrics(), Stamps()
    station = Timed(book, [EventsPublisher(events), metrics, stamps], StationConfig(deadline_ms=None))
    station.received = {}
    metrics.bind(station)
    server = StationServer(station, "127.0.0.1", 0, metrics)
    try:
        overhead: dict[str, list[float]] = {"replay": [], "http": []}
        encoded = [base64.b64encode(p.read_bytes()).decode() for p in images]
        for k in range(jobs):
            job = station.submit(Trigger("replay", part_id=str(k), image=images[k % len(images)]))
            stamps.wait(job)
            r = stamps.results[job]
            overhead["replay"].append((stamps.at[job] - station.received[job]) * 1000 - (r.inference_ms or 0))
        # The HTTP client is another process, as a line controller is: it sends each trigger with
        # ?wait=1 and the next one after the answer.
        client = subprocess.run(
            [sys.executable, "-c", CLIENT, str(server.port), str(jobs), *encoded],
            capture_output=True,
            text=True,
            check=True,
        )
        for job in client.stdout.split():
            stamps.wait(job)
            r = stamps.results[job]
            overhead["http"].append((stamps.at[job] - station.received[job]) * 1000 - (r.inference_ms or 0))
        inference = [r.inference_ms for r in stamps.results.values() if r.inference_ms is not None]
        print(f"inference (tiny model, ONNX Runtime CPU): {figures(inference)}")
        for via, values in overhead.items():
            print(f"overhead, {via} triggers: {figures(values)}")
    finally:
        server.close()
        station.close()

    deadline_ms = 50.0
    stall["s"] = 0.2
    stamps = Stamps()
    station = Timed(book, [EventsPublisher(events), stamps], StationConfig(deadline_ms=deadline_ms, queue=1))
    station.received = {}
    try:
        late_by = []
        for k in range(max(jobs // 4, 10)):
            job = station.submit(Trigger("replay", part_id=str(k), image=images[k % len(images)]))
            stamps.wait(job)
            late_by.append((stamps.at[job] - station.received[job]) * 1000 - deadline_ms)
            station.room(5)  # the stalled job is still in the worker; the next waits for room
            while station.state != "ready":
                time.sleep(0.005)
        print(f"TIMEOUT published after the {deadline_ms:g} ms deadline by: {figures(late_by)}")
    finally:
        station.close()
        book.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--jobs", type=int, default=200)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        measure(a.artifacts, list_images(a.images), a.jobs, Path(tmp) / "events.jsonl")


if __name__ == "__main__":
    main()
