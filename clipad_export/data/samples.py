"""One labelled test image (``Sample``) and reading samples for the model.

``load_batch`` goes through the one image path (``clipad.data.images``), so evaluation and
training see exactly the pixels serving sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.data.geometry import ModelSize, geometry
from clipad.data.images import iter_image_batches, load_mask


@dataclass(frozen=True)
class Sample:
    """One test image. label: 0 normal, 1 anomalous; mask: None for normal images (all zero)."""

    image: Path
    label: int
    mask: Path | None
    defect: str
    category: str


def check_mask(image: Path, mask: Path) -> None:
    """A one-line error if ``mask``'s size differs from its ``image``'s (headers only)."""
    from PIL import Image

    try:
        with Image.open(image) as im, Image.open(mask) as mk:
            isize, msize = im.size, mk.size
    except OSError:
        return  # unreadable files are reported (and images skipped) during the run
    if isize != msize:
        raise ClipadError(f"mask {mask} is {msize[0]}x{msize[1]} but its image is {isize[0]}x{isize[1]}")


def check_masks(split: dict[str, list[Sample]]) -> None:
    """Fail before any model work if a mask's size differs from its image's (``check_mask``)."""
    for samples in split.values():
        for s in samples:
            if s.mask is not None:
                check_mask(s.image, s.mask)


def load_batch(samples: list[Sample], size: ModelSize, skipped: list[str]):
    """Read samples for the model through the one image path (``iter_image_batches``): (images
    uint8 [H, W, 3] list, the samples kept, masks).

    Unreadable images are skipped and their errors appended to ``skipped``. A mask is bool
    [H, W], fitted like its image (``clipad.data.geometry``): zeros for normal images, None for
    an anomalous image without a mask file; a mask whose size differs from its image's is a
    ClipadError.
    """
    import numpy as np

    if not samples:
        return [], [], []
    by_path = {s.image: s for s in samples}
    (batch,) = iter_image_batches([s.image for s in samples], size, len(samples), keep_originals=True)
    skipped += batch.skipped
    kept = [by_path[p] for p in batch.paths]
    assert batch.originals is not None  # keep_originals=True
    masks: list[np.ndarray | None] = []
    for s, rgb in zip(kept, batch.originals, strict=False):
        if s.label == 0:
            masks.append(np.zeros(geometry(size).hw, dtype=bool))
        else:
            h, w = rgb.shape[:2]
            masks.append(load_mask(s.mask, size, expect_size=(w, h)) if s.mask is not None else None)
    return list(batch.images), kept, masks
