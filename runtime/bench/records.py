"""`clipad bench`'s rows and goals as typed records (the run's report: ``report.BenchReport``).

``BenchRow``: one backend/precision at one batch size (or the whole combination, batch None, when
it could not run); ``Goal``: a ratio of two rows with a limit; ``Ratio``: one without. Each has
``to_json`` (the JSON's dict, keys in the order the files have always had) and ``from_json``
(which also reads files written before ``attention`` existed).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

Status = str  # "ok", "unavailable" (the whole combination) or "failed" (one batch size)
# The keys of every row; "ok" rows have all the others too.
ROW_BASE = ("backend", "precision", "batch", "status", "reason", "attention")


@dataclass
class BenchRow:
    backend: str
    precision: str
    batch: int | None  # None: the combination did not open
    status: Status
    reason: str | None = None  # why not, for rows that did not run
    attention: str | None = None  # the torch rows' attention form (fused, explicit)
    describe: str | None = None  # the backend's one-line description
    device: str | None = None
    calls_per_batch: int | None = None
    latency_ms: dict[str, float] | None = None  # percentiles
    samples_ms: list[float] | None = None
    images_per_s: float | None = None
    gflops_per_s: float | None = None
    ceiling: str | None = None
    fraction_of_ceiling: float | None = None
    start_up_s: float | None = None
    peak_host_mb: float | None = None
    gpu_mb: float | None = None
    parity: dict[str, Any] | None = None  # the figures of `clipad parity`, within_tolerance, against, n_images

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def p50(self) -> float | None:
        return self.latency_ms["p50"] if self.ok and self.latency_ms is not None else None

    def to_json(self) -> dict[str, Any]:
        keys = [f.name for f in fields(self)] if self.ok else ROW_BASE
        return {k: getattr(self, k) for k in keys}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BenchRow:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class Goal:
    goal: str
    value: float | None  # None: a side could not be measured
    limit: float
    met: bool
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = {"goal": self.goal, "value": self.value, "limit": self.limit, "met": self.met}
        return d if self.detail is None else {**d, "detail": self.detail}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Goal:
        return cls(d["goal"], d["value"], d["limit"], d["met"], d.get("detail"))

    def describe(self) -> str:
        value = "-" if self.value is None else f"{self.value:.2f}"
        detail = f" ({self.detail})" if self.detail else ""
        return f"Goal: {self.goal} = {value} (limit {self.limit}): {'met' if self.met else 'NOT met'}{detail}"


@dataclass
class Ratio:
    ratio: str
    batch: int
    value: float

    def to_json(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "batch": self.batch, "value": self.value}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Ratio:
        return cls(d["ratio"], d["batch"], d["value"])
