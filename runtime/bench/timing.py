"""How every figure of `clipad bench` is taken: the clock, its samples and the process's memory.

- ``warmup`` untimed calls first, then ``iterations`` timed calls, each bracketed by
  ``time.perf_counter``; the samples kept are the timed calls only;
- device work is finished before each clock read: backends return numpy arrays, so their
  outputs are already on the host when the call returns; for torch on CUDA
  ``torch.cuda.synchronize()`` is called as well, and for bare torch work (the dual-path
  comparison, the matmul ceiling) it is what makes the clock honest;
- the median (p50) is quoted, p90/p99 and min/max show the spread.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipad.runtime.backends import Backend


def time_calls(
    fn: Callable[[], Any], warmup: int, iterations: int, sync: Callable[[], None] | None = None
) -> list[float]:
    """Milliseconds of each of ``iterations`` calls of ``fn`` after ``warmup`` untimed calls.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs after every call, inside the timed span, so
    that queued device work is counted in the call that queued it.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return samples


def percentiles(samples_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 (numpy's linear interpolation), min, max and mean of the samples (ms), and n."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "n": int(a.size),
    }


def cuda_sync() -> None:
    torch.cuda.synchronize()


def backend_sync(backend: Backend) -> Callable[[], None] | None:
    """A torch backend on CUDA is synchronised explicitly; the others return host arrays, which
    already means their device work has finished when the call returns."""
    info = backend.info()
    return cuda_sync if info.name == "torch" and info.device == "cuda" else None


def time_backend(backend: Backend, images: np.ndarray, warmup: int, iterations: int) -> list[float]:
    """Milliseconds per call of ``backend(images)`` (uint8 [B, H, W, 3]), warm-up excluded."""
    return time_calls(lambda: backend(images), warmup, iterations, backend_sync(backend))


class HostMemory:
    """The process's resident-set high-water mark in MB, reset per measurement where Linux allows it."""

    def __init__(self) -> None:
        self.resettable = self._reset()
        self.method = "VmHWM reset per row" if self.resettable else "ru_maxrss (process peak since start, not reset)"

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # 5: reset the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.resettable:
            self._reset()

    def peak_mb(self) -> float:
        if self.resettable:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return kb / (1024.0 * 1024.0 if platform.system() == "Darwin" else 1024.0)
