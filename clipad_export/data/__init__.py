"""Dataset readers: published MVTec AD and VisA layouts, a plain folder layout, and `clipad synth`.

Every reader returns the *test* split as ``{category: [Sample, ...]}`` (method.md section 2:
SDP/SDP+ evaluation and the official SDP+ training both read the test split). ``Sample``,
``check_masks`` and ``load_batch`` live in ``clipad.data.samples`` and are exported here.
"""

from __future__ import annotations

from pathlib import Path

from clipad.core.choices import Dataset, parse_choice
from clipad.core.errors import ClipadError
from clipad.data import folder, mvtec, visa
from clipad.data.samples import Sample, check_masks, load_batch

__all__ = ["Sample", "check_masks", "load_batch", "load_split"]


def check_root(root: Path) -> None:
    if not root.is_dir():
        raise ClipadError(f"dataset root not found: {root}")
    if not any(root.iterdir()):
        raise ClipadError(f"dataset root is empty: {root}")


def select(
    found: dict[str, list[Sample]], categories: list[str] | None, root: Path, kind: str, option: str = "--categories"
) -> dict[str, list[Sample]]:
    """Keep the requested categories, failing in one line (naming ``option``) on unknown or empty ones."""
    if not found:
        raise ClipadError(f"no {kind} categories found under {root}")
    names = categories or sorted(found)
    missing = [c for c in names if c not in found]
    if missing:
        available = ", ".join(sorted(found))
        raise ClipadError(f"{option}: category '{missing[0]}' not found under {root} (available: {available})")
    empty = [c for c in names if not found[c]]
    if empty:
        raise ClipadError(f"category '{empty[0]}' under {root} has no test images")
    return {c: found[c] for c in names}


def load_split(
    kind: str, root: str | Path, categories: list[str] | None = None, option: str = "--categories"
) -> dict[str, list[Sample]]:
    """The test split of dataset ``kind`` (mvtec, visa or folder) under ``root``; ``option``: the
    command's option that named ``categories`` (said in the error for an unknown one)."""
    root = Path(root)
    check_root(root)
    readers = {"mvtec": mvtec.read, "visa": visa.read, "folder": folder.read}
    parse_choice(Dataset, kind, "--dataset")
    return select(readers[kind](root), categories, root, kind, option)
