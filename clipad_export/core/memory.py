"""The process's memory, for the soak and load scripts (no model dependency: importing it loads nothing heavy)."""

from __future__ import annotations

from pathlib import Path


def rss_mb() -> float:
    """The process's current resident set (Linux VmRSS) in MiB; NaN where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
