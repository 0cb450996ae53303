"""Output paths checked before a command does its long work, so that a bad one fails at once in one line.

A file path must not be a folder, a folder path not a file; the nearest folder that exists on the
way to it (the writers create the missing ones) must take a new file. The probe is an anonymous
temporary file: nothing is left behind, also when the check fails.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from clipad.core.errors import ClipadError


def check_writable(path: str | Path, option: str, folder: bool = False) -> None:
    """ClipadError naming ``option`` and ``path`` unless a file (``folder``: a folder) can be written there."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        want, got = ("folder", "file") if folder else ("file", "folder")
        raise ClipadError(f"{option} {path} is a {got}: give the path of a {want} to write")
    start = path if folder and path.is_dir() else path.parent
    ancestor = next(p for p in (start, *start.parents) if p.exists() or p == p.parent)
    if not ancestor.is_dir():
        raise ClipadError(f"{option} {path}: {ancestor} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise ClipadError(f"{option} {path}: cannot write in {ancestor} ({err.strerror or err})") from None
