"""Retention of the files a run leaves in one folder (snapshots, video segments): a size quota and an
age limit, the oldest file removed first.

Only files whose names match the folder's pattern (``clipad.runtime.runfiles``: names this tool
gives, with a run id) are ever counted or removed; a user's other files in the folder are never
touched. The folder is listed once, at start; afterwards the files are tracked as they are
written, so a check costs the same with a million files as with ten.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Limits:
    """max_bytes: the folder's quota for this tool's files (0: none); max_age_s: files older than
    this many seconds, by modification time, are removed (0: none)."""

    max_bytes: int = 0
    max_age_s: float = 0.0

    @property
    def active(self) -> bool:
        return self.max_bytes > 0 or self.max_age_s > 0


NO_LIMITS = Limits()


class Retention:
    """Keeps ``folder``'s files that match ``pattern`` within ``limits``.

    ``add`` a file once it is complete; ``prune`` removes, oldest first, until the files are within
    the quota and none is older than the age limit. ``removed`` / ``removed_bytes`` count what went.
    Ages are wall-clock (modification times are); a file that vanished meanwhile only leaves the
    count. A file that cannot be removed is dropped from tracking and counted in ``failed``.
    """

    NOTE_EVERY_S = 60.0

    def __init__(self, folder: Path, pattern: re.Pattern[str], limits: Limits, what: str, notes: deque[str]):
        self.pattern, self.limits, self.what, self.notes = pattern, limits, what, notes
        self._noted, self._noted_at = 0, time.monotonic()
        self.files: deque[tuple[float, Path, int]] = deque()  # (mtime, path, bytes), oldest first
        self.total = self.removed = self.removed_bytes = self.failed = 0
        if limits.active and folder.is_dir():
            found = []
            with os.scandir(folder) as entries:
                for e in entries:
                    if pattern.fullmatch(e.name) and e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        found.append((st.st_mtime, Path(e.path), st.st_size))
            for item in sorted(found):
                self._track(*item)

    def _track(self, mtime: float, path: Path, size: int) -> None:
        self.files.append((mtime, path, size))
        self.total += size

    def add(self, path: Path) -> None:
        """A complete file this tool wrote (its size is final)."""
        if self.limits.active and self.pattern.fullmatch(path.name):
            st = path.stat()
            self._track(st.st_mtime, path, st.st_size)

    def prune(self) -> int:
        """Remove the oldest files while over a limit; returns how many were removed."""
        lim, before = self.limits, self.removed
        oldest = time.time() - lim.max_age_s
        while self.files and (
            (lim.max_bytes and self.total > lim.max_bytes) or (lim.max_age_s and self.files[0][0] < oldest)
        ):
            _, path, size = self.files.popleft()
            self.total -= size
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError:
                self.failed += 1
                continue
            self.removed += 1
            self.removed_bytes += size
        if self.removed > self._noted and time.monotonic() - self._noted_at >= self.NOTE_EVERY_S:
            self.note()
        return self.removed - before

    def note(self) -> None:
        """Report the removals since the last note (at most one note a minute while running)."""
        if self.removed > self._noted or self.failed:
            self.notes.append(self.describe())
            self._noted, self._noted_at = self.removed, time.monotonic()

    def describe(self) -> str:
        """One line on what retention removed so far."""
        line = f"{self.what}: retention removed {self.removed} files ({self.removed_bytes / 2**20:.1f} MiB)"
        return line + (f", {self.failed} could not be removed" if self.failed else "")
