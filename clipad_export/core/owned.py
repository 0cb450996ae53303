"""Output folders: clipad writes only into a folder it created and never deletes a file it did not write.

Every folder a command writes whole (a synthetic dataset, an artifact directory, a Triton model,
predictions, a demo) carries a marker file ``.clipad-<kind>``. A command writes its folder
``out`` only when ``out`` is new, empty, or carries the marker of its kind and holds nothing but
files of that kind (``FolderKind.owns``); anything else is refused in one line, before any work.

The folder is built in a sibling staging folder ``<out>.partial-<pid>`` and swapped in when
complete, so ``out`` holds the old or the new content, never a mix. A staging folder is removed
as stale only by its full name pattern (``<out>.partial-`` and the pid digits), when that process
is not alive and when the folder carries the marker. A symbolic link as ``out`` is written
through: its target folder is replaced and the link kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from clipad.core.atomic import fsync_path
from clipad.core.errors import ClipadError

MARKER_PREFIX = ".clipad-"
_ATOMIC_TMP = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp")  # clipad.core.atomic's temporary names


@dataclass(frozen=True)
class FolderKind:
    """A kind of folder clipad writes: ``name`` names its marker; ``owns`` answers whether a file
    (its path relative to the folder, '/'-separated) is one this kind writes."""

    name: str
    owns: Callable[[str], bool]

    @property
    def marker(self) -> str:
        return f"{MARKER_PREFIX}{self.name}"


def within(prefix: str, owns: Callable[[str], bool]) -> Callable[[str], bool]:
    """``owns`` for files below the sub-folder ``prefix`` (and below its staging folders)."""
    pattern = re.compile(re.escape(prefix) + r"(\.partial-\d+)?/(?P<rest>.+)")

    def owned(rel: str) -> bool:
        match = pattern.fullmatch(rel)
        return match is not None and owns(match["rest"])

    return owned


def clear(folder: Path, kind: FolderKind) -> None:
    """Remove everything in ``folder`` but its marker; only after ``check_out`` found nothing foreign."""
    for entry in folder.iterdir():
        if entry.name != kind.marker:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def write_marker(folder: Path, kind: FolderKind) -> None:
    """Mark ``folder`` as written by clipad (a small JSON file naming the kind)."""
    (folder / kind.marker).write_text(json.dumps({"kind": kind.name}) + "\n")


def has_marker(folder: Path, kind: FolderKind) -> bool:
    return (folder / kind.marker).is_file()


def _clipads(kind: FolderKind, rel: str) -> bool:
    """Whether the file at ``rel`` is one clipad writes: the kind's own files, any clipad marker
    (of nested folders too), and a temporary file of an atomic write of one of them."""
    name = rel.rsplit("/", 1)[-1]
    if name.startswith(MARKER_PREFIX) or kind.owns(rel):
        return True
    tmp = _ATOMIC_TMP.fullmatch(name)
    return tmp is not None and kind.owns(rel[: len(rel) - len(name)] + tmp["name"])


def foreign_files(folder: Path, kind: FolderKind) -> list[str]:
    """Paths (relative, sorted) of the files and links in ``folder`` that clipad does not write
    there; links are listed, never followed."""
    found = []
    for top, dirs, files in os.walk(folder):
        base = Path(top).relative_to(folder)
        links = [d for d in dirs if (Path(top) / d).is_symlink()]
        for name in files + links:
            rel = (base / name).as_posix()
            if not _clipads(kind, rel):
                found.append(rel)
    return sorted(found)


def _listing(names: list[str], most: int = 3) -> str:
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def check_out(out: Path, kind: FolderKind, flag: str = "--out", force: bool = True) -> None:
    """Refuse, in one line, an ``out`` this command may not replace: a file, the current folder
    (or one above it), a non-empty folder without the kind's marker, or with files clipad did not
    write; with ``force`` False also a marked folder that is not empty."""
    if out.exists() and not out.is_dir():
        raise ClipadError(f"{flag} {out} is a file; clipad writes a folder there")
    if not out.exists():
        return
    here = Path.cwd().resolve()
    if out.resolve() in (here, *here.parents):  # replacing it would pull the folder away under the shell
        raise ClipadError(f"{flag} {out} is the current folder or holds it; name a new folder")
    if not any(out.iterdir()):
        return
    if not has_marker(out, kind):
        raise ClipadError(
            f"{flag} {out} is not empty and was not written by clipad (no {kind.marker}); choose another {flag}"
        )
    foreign = foreign_files(out, kind)
    if foreign:
        raise ClipadError(
            f"{flag} {out} holds files clipad did not write ({_listing(foreign)}); move them or choose another {flag}"
        )
    if not force:
        raise ClipadError(f"{flag} {out} exists (use --force to replace it)")


def resolve_out(out: str | Path) -> Path:
    """``out`` as an absolute path, a symbolic link as its last part replaced by the link's
    target (written through, the link kept); other links in the path are kept."""
    out = Path(out)
    return out.resolve() if out.is_symlink() else Path(os.path.abspath(out))  # abspath: "." gets a name


def stage_path(out: Path, pid: int | None = None) -> Path:
    return out.parent / f"{out.name}.partial-{os.getpid() if pid is None else pid}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or not a pid): leave its folder alone
    return True


def remove_stale_stages(out: Path, kind: FolderKind) -> None:
    """Remove ``<out>.partial-<pid>`` folders of processes that are no longer alive and that
    carry the kind's marker; any other sibling is left alone."""
    pattern = re.compile(re.escape(out.name) + r"\.partial-(\d+)")
    for p in out.parent.glob(f"{glob_escape(out.name)}.partial-*"):
        match = pattern.fullmatch(p.name)
        if match and not p.is_symlink() and p.is_dir() and has_marker(p, kind) and not _alive(int(match[1])):
            shutil.rmtree(p, ignore_errors=True)


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def exchange_dirs(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); False where the
    platform or file system cannot, and nothing was changed."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@dataclass
class Staged:
    """A staging folder for ``out`` (``path``); ``commit`` swaps it in."""

    out: Path
    path: Path
    kind: FolderKind

    def commit(self) -> None:
        """Swap the staging folder in; the old folder, all clipad's (checked again now), is removed."""
        check_out(self.out, self.kind)  # nothing of the user's arrived there meanwhile
        fsync_path(self.path)
        if self.out.exists():
            if exchange_dirs(self.path, self.out):  # path now holds the old folder, removed below
                fsync_path(self.out.parent)
            else:
                old = self.out.parent / f"{self.out.name}.old-{os.getpid()}"
                self.out.rename(old)
                self.path.rename(self.out)
                fsync_path(self.out.parent)
                shutil.rmtree(old, ignore_errors=True)
        else:
            self.path.rename(self.out)
            fsync_path(self.out.parent)

    def discard(self) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)


def open_stage(out: str | Path, kind: FolderKind, flag: str = "--out", force: bool = True) -> Staged:
    """Check ``out`` (``check_out``), remove stale staging folders and create this process's,
    marked; the caller fills it and commits or discards it."""
    out = resolve_out(out)
    check_out(out, kind, flag, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_stages(out, kind)
        stage = stage_path(out)
        if stage.exists() and has_marker(stage, kind):  # this pid's own, left by an earlier process
            shutil.rmtree(stage)
        stage.mkdir()
        write_marker(stage, kind)
    except OSError as err:
        raise ClipadError(f"cannot write to {out.parent}: {err.strerror or err}") from None
    return Staged(out, stage, kind)


@contextmanager
def staged(out: str | Path, kind: FolderKind, flag: str = "--out", force: bool = True) -> Iterator[Path]:
    """Yield a new, marked staging folder for ``out``; on success it replaces ``out``, on any
    exception it is removed and ``out`` is left as it was."""
    stage = open_stage(out, kind, flag, force)
    try:
        yield stage.path
        stage.commit()
    finally:
        stage.discard()
