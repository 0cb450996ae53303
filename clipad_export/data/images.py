"""The one image resize, mask resize and pixel normalisation used by every path.

method.md section 2: images are squashed to the model resolution (both sides, aspect ratio not
kept) with PIL bicubic in the file's own mode, and converted to RGB *after* the resize; masks
are binarised (> 0), resized with PIL bilinear and thresholded at 0.5. Normalisation uses the
OpenAI mean/std and happens inside the model (and inside the exported graph), so everything
outside the model handles uint8 RGB only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipad.core.errors import ClipadError


class ImageReadError(ClipadError):
    """An image or mask file that cannot be decoded."""


def read_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file in its own mode (no RGB conversion yet)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from None


def resize_to_model(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Squash-resize to ``size`` x ``size`` and return RGB uint8 [size, size, 3].

    ``image`` is a PIL image in any mode, or a uint8 array [H, W] (grey) or [H, W, 3] (RGB).
    PIL's bicubic (antialiased when downscaling, 8-bit rounding) runs in the image's own mode,
    then the result becomes RGB, as the official transform does (method.md section 2).
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise ClipadError(f"expected a uint8 [H, W] or [H, W, 3] RGB array, got {image.dtype} {list(image.shape)}")
        image = Image.fromarray(image)
    resized = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized.convert("RGB"), dtype=np.uint8)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Read an image file and resize it for the model: uint8 RGB [size, size, 3]."""
    return resize_to_model(read_image(path), size)


def resize_mask(mask: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """Binarise (> 0), bilinear-resize and threshold at 0.5: bool [size, size] (method.md section 2)."""
    arr = np.asarray(mask)
    if arr.ndim == 3:  # colour-coded masks: any non-zero channel is defect
        arr = arr.max(axis=2)
    binary = Image.fromarray(((arr > 0) * 255).astype(np.uint8), mode="L")
    resized = np.asarray(binary.resize((size, size), Image.Resampling.BILINEAR))
    # ToTensor (/255) then > 0.5  <=>  value >= 128 on uint8.
    return resized >= 128


def load_mask(path: str | Path, size: int, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask and resize it: bool [size, size].

    ``expect_size`` is the (width, height) of the mask's image; a mismatch is a ClipadError.
    """
    mask = read_image(path)
    if expect_size is not None and mask.size != tuple(expect_size):
        raise ClipadError(
            f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image is {expect_size[0]}x{expect_size[1]}"
        )
    return resize_mask(mask, size)
