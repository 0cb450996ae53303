"""The one image path: files and frames -> model-size uint8 RGB batches, and the mask resize.

Every consumer goes through here: `clipad eval` and `clipad train` (dataset samples), `clipad
predict`, `clipad calibrate`, the INT8 calibration, `clipad parity --images` and `clipad run`
(image files, video frames and camera frames). The order is always

    decode (PIL for files; OpenCV for video and cameras)
      -> RGB uint8 (``clipad.data.colour.to_rgb``: grey replicated, alpha dropped, 16-bit / 257)
      -> resize to the model input with PIL bicubic (``clipad.data.geometry``: squashed to
         S x S, aspect ratio not kept, for CLIP-AD; smaller edge and top-left crop for AnomalyDINO)

so the same file gives the model the same bytes in evaluation and in serving. For RGB and
greyscale files this equals the official order (resize in the file's own mode, then RGB;
method.md sections 2 and 13); for palette, 16-bit and RGBA files it avoids the official order's
nearest-neighbour resize, clipping and alpha handling. Masks are binarised (> 0), resized with
PIL bilinear and thresholded at 0.5.

Normalisation (mean/std) is not done here: it happens inside the model and inside the exported
graph (``clipad.model.preprocess``), so everything outside the model handles uint8 RGB only.
"""

from __future__ import annotations

import glob
import io
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageMode, UnidentifiedImageError

from clipad.core.errors import ClipadError
from clipad.data.colour import pil_to_rgb
from clipad.data.geometry import ModelSize, geometry

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
# Larger images are refused from the file's header, before decoding (a decompression bomb would
# take gigabytes); 16384 x 16384 is far beyond any inspection camera and four times the 8K frames
# that are tested. PIL's own guard (an error above 2 x MAX_IMAGE_PIXELS) is set from it, so the
# limit that applies is this one, not PIL's default of about 179 Mpx.
MAX_PIXELS = 16384 * 16384
# 16- and 32-bit samples (16-bit grey, 32-bit integer and float TIFFs) take 2 to 4 bytes a pixel
# decoded, and their conversion to 8 bits a few float32 copies: their limit is a quarter of the
# pixels, which keeps their peak memory below that of an 8-bit RGB image at MAX_PIXELS.
MAX_WIDE_PIXELS = MAX_PIXELS // 4
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageReadError(ClipadError):
    """An image or mask file that cannot be decoded."""


def is_image_file(path: Path) -> bool:
    """A regular, non-hidden file with an image suffix (the one file filter of every reader)."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(spec: str | Path) -> list[Path]:
    """The image files named by ``spec``: one file, a folder (recursively, sorted) or a glob
    (``**`` recursive, sorted). Symbolic links to folders are not descended into (so a link loop
    cannot hang or repeat the listing), and a file reached under several names (links) is listed
    once, under its own name when that is among them. ClipadError when there are none."""
    p = Path(spec)
    found: Iterable[Path]
    if p.is_dir():
        found = p.rglob("*")  # pathlib's recursion does not follow links to folders
    elif p.is_file():
        found = iter([p])
    else:
        found = _glob(str(spec))
    files = _once_each(sorted(f for f in found if is_image_file(f)))
    if not files:
        raise ClipadError(f"no images found at {spec}")
    return files


def _glob(spec: str) -> Iterator[Path]:
    """The paths matching a glob, with ``**`` recursing like a folder (pathlib's ``Path.glob``
    on Python 3.11 and 3.12: links to folders are not followed; ``glob.glob`` follows them, so
    a link to ``.`` repeated the tree until the path grew too long)."""
    parts = Path(spec).parts
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    anchor, pattern = Path(*parts[:fixed]) if fixed else Path("."), Path(*parts[fixed:])
    if not pattern.parts:
        return iter([anchor])
    if pattern.name == "**":  # glob.glob's "dir/**" is every path below dir; pathlib's only the folders
        pattern = pattern / "*"
    return anchor.glob(str(pattern)) if anchor.is_dir() else iter([])


def _once_each(paths: list[Path]) -> list[Path]:
    """Sorted ``paths`` with each file (by its resolved path) once: under its own name when it is
    listed under it, else under its first link."""
    chosen: dict[Path, Path] = {}
    for path in paths:
        real = path.resolve()
        if real not in chosen or chosen[real].is_symlink() and not path.is_symlink():
            chosen[real] = path
    return sorted(chosen.values())


@contextmanager
def _decoded(path: str | Path, data: bytes | None = None) -> Iterator[Image.Image]:
    """The image file (or, with ``data``, the encoded image ``data`` named ``path`` in messages),
    fully decoded in its own mode, after its size has been checked against the limits from its
    header; ImageReadError when it cannot be read or is too large."""
    try:
        with warnings.catch_warnings():
            # PIL warns from MAX_IMAGE_PIXELS (and refuses from twice that); the check below decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as im:
                _check_size(path, im)
                im.load()
                yield im
    except Image.DecompressionBombError:
        raise ImageReadError(
            f"cannot read image {path}: more than the limit of {MAX_PIXELS} pixels (a decompression bomb?)"
        ) from None
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ImageReadError(f"cannot read image {path}: {err}") from None


def _check_size(path: str | Path, im: Image.Image) -> None:
    pixels, sample_bytes = im.width * im.height, int(ImageMode.getmode(im.mode).typestr[-1])
    limit = MAX_PIXELS if sample_bytes == 1 else MAX_WIDE_PIXELS
    if pixels > limit:
        samples = "" if sample_bytes == 1 else f" of {8 * sample_bytes}-bit samples"
        raise ImageReadError(
            f"cannot read image {path}: {im.width}x{im.height} pixels{samples} is more than the "
            f"limit of {limit} (a decompression bomb?)"
        )


def read_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file in its own mode (masks and image sizes use this).

    Unreadable files and images of more than ``MAX_PIXELS`` pixels (``MAX_WIDE_PIXELS`` with
    16- or 32-bit samples) raise ImageReadError, which every reader counts as a skipped file."""
    with _decoded(path) as im:
        return im.copy()


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 [H, W, 3] at its own size (converted while the decoded
    image is open: no copy of it)."""
    with _decoded(path) as im:
        return pil_to_rgb(im)


def decode_rgb(data: bytes, name: str = "image bytes") -> np.ndarray:
    """``read_rgb`` for an encoded image held in memory (PNG, JPEG, ... as a file would hold it):
    RGB uint8 [H, W, 3]; ImageReadError naming ``name`` when it cannot be decoded or is too large."""
    with _decoded(name, data) as im:
        return pil_to_rgb(im)


def resize_to_model(rgb: np.ndarray, size: ModelSize) -> np.ndarray:
    """An RGB uint8 [H, W, 3] image -> the model input uint8 [height, width, 3] of ``size`` (S:
    squash to S x S; a Geometry: its policy, ``clipad.data.geometry``) with PIL bicubic
    (antialiased when downscaling, 8-bit rounding); a frame already at size is returned as is."""
    return geometry(size).fit(rgb)


def model_batch(frames: Sequence[np.ndarray], size: ModelSize) -> np.ndarray:
    """RGB uint8 frames of any sizes -> the model's input batch uint8 [B, height, width, 3]."""
    fit = geometry(size)
    if not frames:
        return np.zeros((0, fit.height, fit.width, 3), np.uint8)
    return np.stack([fit.fit(f) for f in frames])


def load_image(path: str | Path, size: ModelSize) -> np.ndarray:
    """Read an image file and resize it for the model: uint8 RGB [height, width, 3]."""
    return resize_to_model(read_rgb(path), size)


@dataclass
class ImageBatch:
    """A batch read from files. images: uint8 [B, height, width, 3] for ``paths`` (the readable
    ones, in order); ``originals``: the decoded RGB images at their own size when asked for;
    ``skipped``: one message per unreadable file of this batch; ``consumed``: files read or skipped."""

    paths: list[Path]
    images: np.ndarray
    originals: list[np.ndarray] | None = None
    skipped: list[str] = field(default_factory=list)
    consumed: int = 0


def iter_image_batches(
    paths: Sequence[Path], size: ModelSize, batch_size: int, keep_originals: bool = False
) -> Iterator[ImageBatch]:
    """Read ``paths`` in order, ``batch_size`` files at a time; unreadable files are skipped and
    reported in the batch that met them (a batch may then be smaller, or empty)."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        kept, rgbs, skipped = [], [], []
        for p in chunk:
            try:
                rgbs.append(read_rgb(p))
            except ImageReadError as err:
                skipped.append(str(err))
                continue
            kept.append(Path(p))
        yield ImageBatch(kept, model_batch(rgbs, size), rgbs if keep_originals else None, skipped, len(chunk))


def read_model_images(spec: str | Path, size: ModelSize, limit: int | None = None) -> np.ndarray:
    """Up to ``limit`` readable images named by ``spec`` (see ``list_images``), for the model:
    uint8 [N, height, width, 3]. ClipadError when none can be read."""
    out: list[np.ndarray] = []
    for batch in iter_image_batches(list_images(spec), size, 16):
        out.extend(batch.images)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ClipadError(f"none of the images at {spec} could be read")
    return np.stack(out[:limit])


def resize_mask(mask: Image.Image | np.ndarray, size: ModelSize) -> np.ndarray:
    """Binarise (> 0), bilinear-resize through the image's geometry and threshold at 0.5: bool
    [height, width] (method.md section 2)."""
    return geometry(size).fit_mask(np.asarray(mask))


def load_mask(path: str | Path, size: ModelSize, expect_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask and resize it: bool [height, width].

    ``expect_size`` is the (width, height) of the mask's image; a mismatch is a ClipadError.
    """
    mask = read_image(path)
    if expect_size is not None and mask.size != tuple(expect_size):
        raise ClipadError(
            f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image is {expect_size[0]}x{expect_size[1]}"
        )
    return resize_mask(mask, size)
