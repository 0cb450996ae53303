"""Input geometry: the model's fixed input [height, width] and how an image of any size becomes it.

Two policies, chosen by the method (``clipad.methods.base.Preprocess``) and recorded by the
export (the manifest's ``image_size`` and, for AnomalyDINO, its resolution):

- **squash** (CLIP-AD, method.md section 2): resize to height x width, aspect ratio not kept.
- **smaller edge** (AnomalyDINO, method.md 15.1): resize, aspect ratio kept, so that the smaller
  edge is ``edge`` px (torchvision's ``Resize(int)`` sizes), then keep the top-left height x
  width. The export's height x width is that of its reference images (each side floored to a
  multiple of the patch size: ``Geometry.smaller_edge``), so every image of the reference images'
  shape gets exactly the official input. An image of another aspect ratio would give the official
  code another patch grid, which a graph of fixed size cannot take: its smaller edge is raised
  until the resized image covers height x width (the least enlargement that does), then it is
  cropped the same way; the part right of or below the crop is not inspected
  (``Geometry.covered`` says which part is).

Every resize uses PIL bicubic on uint8 RGB (antialiased when downscaling); masks are binarised,
resized bilinear and thresholded at 0.5 through the same geometry, so a mask stays aligned with
its image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from clipad.core.errors import ClipadError


def smaller_edge_size(height: int, width: int, edge: int) -> tuple[int, int]:
    """(h, w) of an image resized so its smaller edge is ``edge`` and the other int(edge * long /
    short), as torchvision's ``Resize(int)`` computes it."""
    return (edge, int(edge * width / height)) if height <= width else (int(edge * height / width), edge)


@dataclass(frozen=True)
class Geometry:
    """The model input ``height`` x ``width`` (px) and the policy that fills it: ``edge`` 0 squashes;
    ``edge`` > 0 resizes the smaller edge to ``edge`` (or more, to cover) and crops the top-left."""

    height: int
    width: int
    edge: int = 0

    @classmethod
    def square(cls, size: int) -> Geometry:
        """Squash to size x size (CLIP-AD's input)."""
        return cls(size, size)

    @classmethod
    def smaller_edge(cls, edge: int, multiple: int, height: int, width: int) -> Geometry:
        """AnomalyDINO's input for images of ``height`` x ``width`` px: the smaller edge resized to
        ``edge``, each side then floored to a multiple of ``multiple`` (the patch size)."""
        h, w = smaller_edge_size(height, width, edge)
        if h < multiple or w < multiple:
            raise ClipadError(f"images of {width}x{height} px give no {multiple} px patch at --resolution {edge}")
        return cls(h - h % multiple, w - w % multiple, edge)

    @property
    def hw(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def square_size(self) -> int | None:
        """S when the input is S x S, else None."""
        return self.height if self.height == self.width else None

    def __str__(self) -> str:
        return f"{self.width}x{self.height} px" + (f" (smaller edge {self.edge}, top-left crop)" if self.edge else "")

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) an image of ``height`` x ``width`` is resized to before the crop (squash: the input)."""
        if not self.edge:
            return self.hw
        edge = self.edge
        while True:
            h, w = smaller_edge_size(height, width, edge)
            if h >= self.height and w >= self.width:
                return h, w
            # the least edge that covers, from the short side's ratio; the loop absorbs int() rounding
            need = max(self.height * min(height, width) / height, self.width * min(height, width) / width)
            edge = max(edge + 1, int(np.ceil(need)))

    def covered(self, height: int, width: int) -> tuple[int, int]:
        """The top-left part (h, w) of an image of ``height`` x ``width`` px that the input shows
        (the whole image when squashed)."""
        rh, rw = self.resized(height, width)
        return min(height, round(self.height * height / rh)), min(width, round(self.width * width / rw))

    def inspected(self, image: np.ndarray) -> np.ndarray:
        """The part of ``image`` [H, W, ...] that the model input shows (a view, not a copy): all
        of it when squashed, the top-left ``covered`` part when cropped. An overlay drawn on it
        with the map squashed to its size is aligned for both policies."""
        h, w = self.covered(image.shape[0], image.shape[1])
        return image[:h, :w]

    def fit(self, rgb: np.ndarray) -> np.ndarray:
        """An RGB uint8 [H, W, 3] image -> the model input uint8 [height, width, 3] (an image that
        needs no resize and no crop is returned as it is)."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ClipadError(f"expected an RGB uint8 [H, W, 3] image, got {rgb.dtype} {list(rgb.shape)}")
        rh, rw = self.resized(rgb.shape[0], rgb.shape[1])
        if (rh, rw) != rgb.shape[:2]:
            rgb = np.asarray(Image.fromarray(rgb).resize((rw, rh), Image.Resampling.BICUBIC), dtype=np.uint8)
        return rgb[: self.height, : self.width]

    def fit_mask(self, mask: np.ndarray) -> np.ndarray:
        """A mask [H, W] or [H, W, C] (any non-zero value is defect) -> bool [height, width]:
        binarised, resized bilinear like its image, thresholded at 0.5 (method.md section 2)."""
        arr = np.asarray(mask)
        if arr.ndim == 3:  # colour-coded masks: any non-zero channel is defect
            arr = arr.max(axis=2)
        binary = Image.fromarray(((arr > 0) * 255).astype(np.uint8), mode="L")
        rh, rw = self.resized(arr.shape[0], arr.shape[1])
        resized = np.asarray(binary.resize((rw, rh), Image.Resampling.BILINEAR))
        # ToTensor (/255) then > 0.5  <=>  value >= 128 on uint8.
        return resized[: self.height, : self.width] >= 128


ModelSize = int | Geometry  # what the image path takes: S (squash to S x S) or a Geometry


def geometry(size: ModelSize) -> Geometry:
    """``size`` as a Geometry (an int S: squash to S x S)."""
    return size if isinstance(size, Geometry) else Geometry.square(int(size))
