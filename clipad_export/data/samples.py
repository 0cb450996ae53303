"""One labelled test image (``Sample``) and reading samples for the model.

``load_batch`` goes through the one image path (``clipad.data.images``), so evaluation and
training see exactly the pixels serving sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.data.images import ImageReadError, load_mask, read_rgb, resize_to_model


@dataclass(frozen=True)
class Sample:
    """One test image. label: 0 normal, 1 anomalous; mask: None for normal images (all zero)."""

    image: Path
    label: int
    mask: Path | None
    defect: str
    category: str


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
