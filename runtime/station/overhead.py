"""The station's own share of each job, per channel: where every channel says "published".

Overhead of a job on a channel = (the moment the channel published its result - the moment the
station received the trigger) - the job's inference time, both moments from this process's
monotonic clock (``JobResult.received``). Published means: handed to paho's ``publish`` (MQTT),
the ResultReady event fired by the server loop (OPC UA), the ``?wait=1`` answer written (HTTP).
Each figure goes to the metrics (``clipad_station_overhead_seconds{channel, via}``) and, when
asked for, to a trace file the benchmark scripts read (``clipad station --trace FILE``): one JSON
line per job and channel, ``{"job_id", "via", "channel", "overhead_ms", "inference_ms"}``, where
``inference_ms`` is null for a job that was never inspected (refused, busy, no image).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal

from clipad.runtime.station.metrics import StationMetrics
from clipad.runtime.station.records import JobResult

Channel = Literal["http", "mqtt", "opcua"]
FLUSH_S = 0.5  # the trace is flushed at most this long after a line (readable while the station runs)


def overhead_ms(result: JobResult, at: float) -> float | None:
    """(``at`` - the trigger's reception) - inference time, in ms; None without a reception time."""
    if result.received is None:
        return None
    return (at - result.received) * 1000 - (result.inference_ms or 0.0)


class ChannelClock:
    """What every channel calls the moment it has published a result (``sent``): the overhead
    histogram of ``metrics`` and, with ``trace``, a line in that file (appended). Thread-safe;
    the channels call it from their own threads. A trace that cannot be written is given up with
    one line to ``log`` (the metrics go on)."""

    def __init__(
        self,
        metrics: StationMetrics | None = None,
        trace: Path | None = None,
        log: Callable[[str], None] = lambda s: None,
    ):
        self.metrics, self.log = metrics, log
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._flushed = time.monotonic()
        if trace is not None:
            trace.parent.mkdir(parents=True, exist_ok=True)
            self._file = trace.open("a", encoding="utf-8")

    def sent(self, channel: Channel, result: JobResult) -> None:
        at = time.monotonic()
        overhead = overhead_ms(result, at)
        if overhead is None or result.late:
            return
        if self.metrics is not None:
            self.metrics.overhead.labels(channel, result.via).observe(overhead / 1000)
        if self._file is None:
            return
        line = json.dumps(
            {
                "job_id": result.job_id,
                "via": result.via,
                "channel": channel,
                "overhead_ms": round(overhead, 4),
                "inference_ms": None if result.inference_ms is None else round(result.inference_ms, 4),
            }
        )
        with self._lock:
            if self._file is None:
                return
            try:
                self._file.write(line + "\n")
                if at - self._flushed > FLUSH_S:
                    self._file.flush()
                    self._flushed = at
            except OSError as err:
                self._file = None
                self.log(f"warning: the trace file cannot be written ({err.strerror or err}); tracing stopped")

    def close(self) -> None:
        with self._lock:
            f, self._file = self._file, None
        if f is not None:
            try:
                f.close()
            except OSError as err:
                self.log(f"warning: the trace file cannot be written ({err.strerror or err})")
