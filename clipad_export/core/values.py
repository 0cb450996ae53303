"""Numeric option values: one parser per kind, used where a command's request is built.

A ``Bounds`` is a kind of value (a smoothing sigma, a false-positive rate, a learning rate...):
its closed or open interval, whether it is an integer, and why it is bounded. ``Bounds.parse``
turns an option's value into that kind or raises a one-line ClipadError naming the option, so
NaN, infinities and absurd sizes are refused before any model work, the same way by every
command. The manifest schema takes its limits from the same constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clipad.core.errors import ClipadError


@dataclass(frozen=True)
class Bounds:
    """A finite number in [low, high] (``low_open``: (low, high]); ``integer``: an int;
    ``why``: what the bound protects, said in the error."""

    low: float
    high: float
    low_open: bool = False
    integer: bool = False
    why: str = ""

    def describe(self) -> str:
        low, high = (f"{int(b)}" if self.integer else f"{b:g}" for b in (self.low, self.high))
        return f"{'(' if self.low_open else '['}{low}, {high}]"

    def parse(self, value: float, what: str) -> float:
        """``value`` when it is of this kind; else a one-line error naming ``what`` (the option)."""
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > self.low if self.low_open else value >= self.low) and value <= self.high
        if ok and self.integer and value != int(value):
            ok = False
        if not ok:
            kind = "an integer" if self.integer else "a finite number"
            why = f" ({self.why})" if self.why else ""
            raise ClipadError(f"{what} must be {kind} in {self.describe()}{why}, got {value}")
        return value


# The Gaussian blur of the map truncates at 4 sigma: at 64 its radius (256 px) already spans any
# served image, so a larger sigma only costs memory (a dense [S, S] kernel matrix per axis).
MAX_SIGMA = 64.0
SIGMA = Bounds(0.0, MAX_SIGMA, why="map smoothing in pixels; 0: none")
MAX_IMAGE_SIZE = 4096  # px per side; a model's input, not a camera's frame
MAX_BATCH = 1024  # images per call of a served graph
BATCH = Bounds(1, MAX_BATCH, integer=True)
TARGET_FPR = Bounds(1e-6, 0.5, why="false-positive rate on good images")
LEARNING_RATE = Bounds(0.0, 1.0, low_open=True)
AUROC_DROP = Bounds(0.0, 100.0, why="AUROC points")
AGREEMENT = Bounds(0.0, 1.0, why="top-1% pixel agreement")
ITERATIONS = Bounds(1, 100_000, integer=True)
WARMUP = Bounds(0, 10_000, integer=True)
TRITON_TIMEOUT = Bounds(0.0, 3600.0, low_open=True, why="seconds per request")
INFLIGHT = Bounds(1, 256, integer=True, why="requests in flight per client")
SEED = Bounds(0, 2**32 - 1, integer=True)
PORT = Bounds(1, 65535, integer=True, why="a TCP port")
SHOTS = Bounds(1, 100_000, integer=True, why="good images per category")
MEMORY_PATCHES = Bounds(1, 10_000_000, integer=True, why="patch features kept in the reference memory")
