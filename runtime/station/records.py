"""What crosses the station's boundaries: a trigger (a request to inspect one part), a job's
result, and the two roles around the station (whoever sends triggers, whoever publishes results).

A trigger comes from the OPC UA server, the MQTT command topic, the HTTP endpoint, or a folder /
list file for replays; the station turns each into exactly one ``JobResult`` with a unique job id,
which every ``Publisher`` receives (events file, MQTT, OPC UA, metrics). Verdicts are fail-safe:
anything but a completed, calibrated inspection below the threshold is not OK.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

TriggerVia = Literal["opcua", "mqtt", "http", "replay", "camera"]  # camera: a frame a triggered camera sent


class Verdict(StrEnum):
    """A job's answer to the line: OK (pass), NG (reject), ERROR (no inspection; the part is
    treated as NG by the line), TIMEOUT (no verdict within the deadline; treated as NG)."""

    OK = "OK"
    NG = "NG"
    ERROR = "error"
    TIMEOUT = "timeout"

    @property
    def passes(self) -> bool:
        """Only OK lets the part through (fail-safe)."""
        return self is Verdict.OK


@dataclass(frozen=True)
class Trigger:
    """One request to inspect a part. ``part_id``: the line's id (None: the station numbers it);
    ``recipe``: the recipe to use (None: the active one); ``image``: the part's image as a path,
    encoded bytes (PNG/JPEG) or an RGB uint8 [H, W, 3] array (a camera's frame, not decoded
    again), or None to capture a frame from the station's source at the trigger; ``frame_id``:
    the frame an array image is (the camera's frame id or the source's frame index); ``via``:
    where it came from; ``received``: monotonic seconds when the station received it (deadlines
    and latencies); ``received_wall``: the same instant on the wall clock (labels only);
    ``refused``: a trigger that could not be read (a malformed payload): it still gets a job id
    and its one result, ERROR with this reason."""

    via: TriggerVia
    part_id: str | None = None
    recipe: str | None = None
    image: Path | bytes | np.ndarray | None = None
    frame_id: int | None = None
    refused: str | None = None
    received: float = field(default_factory=time.monotonic)
    received_wall: float = field(default_factory=time.time)


@dataclass(frozen=True)
class JobResult:
    """The one result of a trigger, keyed by ``job_id`` (unique per station; part ids may repeat).

    ``why``: for ERROR and TIMEOUT, one line saying why (``busy``: the queue was full);
    ``score``: normalised in [0, 1], 0.5 at the threshold (None when there is none);
    ``defect_area``: fraction of the image above the pixel threshold; ``inference_ms``: the
    backend's share of the job; ``latency_ms``: trigger received to result published;
    ``frame_id``: the frame a captured image came from (the camera's own frame id, else the
    source's frame index; None for an image sent with the trigger); ``late``: a verdict that came
    after its TIMEOUT was published (logged, never published as the job's answer); ``received``:
    the trigger's ``Trigger.received`` (monotonic seconds, this process only: each channel's
    overhead is measured from it; not part of the record)."""

    job_id: str
    part_id: str
    recipe: str
    verdict: Verdict
    via: TriggerVia
    triggered_at: float  # wall-clock seconds (received_wall)
    latency_ms: float
    why: str | None = None
    score: float | None = None
    defect_area: float | None = None
    inference_ms: float | None = None
    frame_id: int | None = None
    late: bool = False
    received: float | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The result record of every channel (events file, MQTT payload, OPC UA fields, HTTP)."""
        return {
            "job_id": self.job_id,
            "part_id": self.part_id,
            "recipe": self.recipe,
            "verdict": self.verdict.value,
            "why": self.why,
            "score": self.score,
            "defect_area": self.defect_area,
            "latency_ms": round(self.latency_ms, 3),
            "inference_ms": None if self.inference_ms is None else round(self.inference_ms, 3),
            "via": self.via,
            "time": datetime.fromtimestamp(self.triggered_at, UTC).isoformat(timespec="milliseconds"),
            "late": self.late,
            "frame_id": self.frame_id,
        }


class Publisher(Protocol):
    """Where results go. ``publish`` must not block the station for long (a slow channel queues
    or spools); it is called once per result, in job order, from one thread."""

    def publish(self, result: JobResult) -> None: ...

    def close(self) -> None: ...


StationState = Literal["ready", "busy", "error", "halted"]  # OPC 40100-1's top states, in its words


class StationPort(Protocol):
    """The station as its trigger sources and protocol servers see it. ``submit`` returns the new
    job's id at once (its result follows through the publishers, also for a refused trigger:
    ERROR "busy", "unknown recipe ..."); ``result`` finds a recent result by job id (bounded
    memory; None when unknown or forgotten); ``state``, ``active_recipe``, ``recipes``: what an
    OPC UA client browses."""

    def submit(self, trigger: Trigger) -> str: ...

    def result(self, job_id: str) -> JobResult | None: ...

    @property
    def state(self) -> StationState: ...

    @property
    def active_recipe(self) -> str: ...

    @property
    def recipes(self) -> list[str]: ...
