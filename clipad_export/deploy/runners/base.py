"""The runner interface: a model file opened once, run on uint8 frames in batches, closed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Self

import numpy as np

Outputs = tuple[np.ndarray, np.ndarray]  # anomaly_map float32 [N, S, S], image_prob float32 [N]


def in_batches(infer: Callable[[np.ndarray], Outputs], images: np.ndarray, step: int) -> Outputs:
    """``infer`` on contiguous slices of at most ``step`` frames of uint8 [N, S, S, 3] ``images``;
    the outputs concatenated as float32 (anomaly_map [N, S, S], image_prob [N])."""
    maps, probs = [], []
    for i in range(0, len(images), max(step, 1)):
        m, p = infer(np.ascontiguousarray(images[i : i + step]))
        maps.append(np.asarray(m, dtype=np.float32))
        probs.append(np.asarray(p, dtype=np.float32))
    return np.concatenate(maps), np.concatenate(probs)


class Runner(ABC):
    """An opened model file. ``infer``: one batch (uint8 [b, S, S, 3], b <= ``max_batch``) ->
    (anomaly_map [b, S, S], image_prob [b]); ``run``: any number of frames, in batches of
    ``max_batch`` (or ``batch``); ``close`` releases the session (again: nothing)."""

    max_batch: int = 1

    @abstractmethod
    def infer(self, images: np.ndarray) -> Outputs: ...

    def run(self, images: np.ndarray, batch: int | None = None) -> Outputs:
        return in_batches(self.infer, images, batch or self.max_batch)

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
