"""Dataset readers: published MVTec AD and VisA layouts, a plain folder layout, and `clipad synth`.

Every reader returns the *test* split as ``{category: [Sample, ...]}`` (method.md section 2:
SDP/SDP+ evaluation and the official SDP+ training both read the test split).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.data.images import ImageReadError, load_mask, read_rgb, resize_to_model

DATASETS = ("mvtec", "visa", "folder")


@dataclass(frozen=True)
class Sample:
    """One test image. label: 0 normal, 1 anomalous; mask: None for normal images (all zero)."""

    image: Path
    label: int
    mask: Path | None
    defect: str
    category: str


def check_root(root: Path) -> None:
    if not root.is_dir():
        raise ClipadError(f"dataset root not found: {root}")
    if not any(root.iterdir()):
        raise ClipadError(f"dataset root is empty: {root}")


def select(found: dict[str, list[Sample]], categories: list[str] | None, root: Path, kind: str) -> dict[str, list[Sample]]:
    """Keep the requested categories, failing in one line on unknown or empty ones."""
    if not found:
        raise ClipadError(f"no {kind} categories found under {root}")
    names = categories or sorted(found)
    missing = [c for c in names if c not in found]
    if missing:
        raise ClipadError(f"category '{missing[0]}' not found under {root} (available: {', '.join(sorted(found))})")
    empty = [c for c in names if not found[c]]
    if empty:
        raise ClipadError(f"category '{empty[0]}' under {root} has no test images")
    return {c: found[c] for c in names}


def load_split(kind: str, root: str | Path, categories: list[str] | None = None) -> dict[str, list[Sample]]:
    """The test split of dataset ``kind`` (mvtec, visa or folder) under ``root``."""
    from clipad.data import folder, mvtec, visa

    root = Path(root)
    check_root(root)
    readers = {"mvtec": mvtec.read, "visa": visa.read, "folder": folder.read}
    if kind not in readers:
        raise ClipadError(f"unknown dataset '{kind}' (one of {', '.join(DATASETS)})")
    return select(readers[kind](root), categories, root, kind)


def check_masks(split: dict[str, list[Sample]]) -> None:
    """Fail before any model work if a mask's size differs from its image's (headers only)."""
    from PIL import Image

    for samples in split.values():
        for s in samples:
            if s.mask is None:
                continue
            try:
                with Image.open(s.image) as im, Image.open(s.mask) as mk:
                    isize, msize = im.size, mk.size
            except OSError:
                continue  # unreadable files are reported (and images skipped) during the run
            if isize != msize:
                raise ClipadError(f"mask {s.mask} is {msize[0]}x{msize[1]} but its image is {isize[0]}x{isize[1]}")


def load_batch(samples: list[Sample], size: int, skipped: list[str]):
    """Read samples for the model through the one image path: (images uint8 [S, S, 3] list, the
    samples kept, masks).

    Unreadable images are skipped and their errors appended to ``skipped``. A mask is bool
    [S, S]: zeros for normal images, None for an anomalous image without a mask file.
    """
    import numpy as np

    images, kept, masks = [], [], []
    for s in samples:
        try:
            rgb = read_rgb(s.image)
        except ImageReadError as err:
            skipped.append(str(err))
            continue
        images.append(resize_to_model(rgb, size))
        kept.append(s)
        if s.label == 0:
            masks.append(np.zeros((size, size), dtype=bool))
        else:
            h, w = rgb.shape[:2]
            masks.append(load_mask(s.mask, size, expect_size=(w, h)) if s.mask is not None else None)
    return images, kept, masks
