"""Names of the files a run writes: unique to the run, never reused, never truncated.

Every run gets a run id, its start in UTC and six random hex digits (``20260314T101502Z-3fa9c1``),
written into each event (``"run"``) and into the name of every snapshot and video file, so a
restarted run, whose frame indices start at 0 again, never names a file an earlier run named.
Files are created exclusively (``open(..., "xb")``): a name that is taken anyway is never opened
for writing, the next free variant (``-2``, ``-3``, ...) is taken instead.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

RUN_ID = r"\d{8}T\d{6}Z-[0-9a-f]{6}"  # the pattern of new_run_id's ids
TAG = r"[0-9a-f]{8}"  # the pattern of source_tag's tags
MAX_VARIANTS = 1000


def new_run_id() -> str:
    """A new run id: the wall-clock start (UTC, a label only) and 24 random bits."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def source_tag(source: str) -> str:
    """Eight hex digits of the source's full name: two sources with the same file stem differ."""
    return hashlib.sha1(source.encode()).hexdigest()[:8]


def snapshot_stem(source: str, run: str, frame: int) -> str:
    """The common start of one snapshot's files, from its event's source, run and frame."""
    return f"{Path(source).stem}_{source_tag(source)}_{run}_{frame:06d}"


def snapshot_pattern() -> re.Pattern[str]:
    """Names of snapshot files this tool wrote (the only ones retention may remove)."""
    return re.compile(rf".*_{TAG}_{RUN_ID}_\d{{6,}}(-\d+)?_(frame\.png|overlay\.png|mask\.png|map\.npy)")


def video_name(path: Path, run: str, source: str, segment: int | None) -> Path:
    """``<stem>-<run>-<source tag>[-<segment>]<suffix>`` beside ``path`` (the --save path)."""
    part = "" if segment is None else f"-{segment:04d}"
    return path.with_name(f"{path.stem}-{run}-{source_tag(source)}{part}{path.suffix}")


def video_pattern(path: Path) -> re.Pattern[str]:
    """Names of the video files this tool wrote for the --save path ``path``."""
    return re.compile(rf"{re.escape(path.stem)}-{RUN_ID}-{TAG}(-\d{{4,}})?(-\d+)?{re.escape(path.suffix)}")


def variant(name: str, n: int) -> str:
    """``name`` itself for n = 1, else ``<name>-<n>``: the n-th choice of a name that is taken."""
    return name if n == 1 else f"{name}-{n}"


def create_new(name: Callable[[int], Path], write: Callable[[BinaryIO], object] = lambda f: None) -> Path:
    """Create ``name(1)``, else ``name(2)``, ... exclusively, let ``write`` fill it and return its path.
    Raises FileExistsError when MAX_VARIANTS names are taken, OSError when it cannot be written."""
    for n in range(1, MAX_VARIANTS + 1):
        path = name(n)
        try:
            file = open(path, "xb")
        except FileExistsError:
            continue
        try:
            with file:
                write(file)
        except BaseException:  # a failed write (full disk) leaves no half-written file behind
            path.unlink(missing_ok=True)
            raise
        return path
    raise FileExistsError(f"{name(1)} and {MAX_VARIANTS - 1} variants of it exist")
