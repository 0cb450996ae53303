"""The input geometry (clipad.data.geometry): the squash of the CLIP methods and AnomalyDINO's
smaller edge with the top-left crop, for images of the reference shape and of other shapes."""

from __future__ import annotations

import numpy as np
import pytest

from clipad.data.geometry import Geometry, geometry
from clipad.data.images import model_batch, resize_mask


def _ramp(h: int, w: int) -> np.ndarray:
    """RGB uint8 [h, w, 3] whose red channel grows down the rows and green across the columns."""
    rows = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    cols = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    return np.stack([rows, cols, np.zeros_like(rows)], axis=2).round().astype(np.uint8)


def test_an_int_is_the_square_squash():
    g = geometry(56)
    assert (g.hw, g.edge, g.square_size) == ((56, 56), 0, 56)
    out = model_batch([_ramp(40, 90)], 56)
    assert out.shape == (1, 56, 56, 3)
    assert g.covered(40, 90) == (40, 90)  # the whole frame, squashed


@pytest.mark.parametrize(("h", "w", "want"), [(128, 160, (448, 560)), (300, 200, (672, 448)), (90, 90, (448, 448))])
def test_the_input_follows_the_reference_images_aspect(h, w, want):
    g = Geometry.smaller_edge(448, 14, h, w)
    assert g.hw == want and g.height % 14 == 0 and g.width % 14 == 0
    assert g.fit(_ramp(h, w)).shape == (*want, 3)
    assert g.covered(h, w) == (h, w)


def test_the_crop_is_top_left_after_the_smaller_edge_resize():
    g = Geometry.smaller_edge(56, 14, 50, 75)  # resized to 56 x 84: no crop
    assert g.hw == (56, 84)
    g = Geometry.smaller_edge(28, 14, 20, 50)  # resized to 28 x 70: the width cropped to 70, none lost
    assert g.hw == (28, 70)
    g = Geometry.smaller_edge(28, 14, 20, 44)  # 28 x 61: cropped to 28 x 56 from the left
    assert g.hw == (28, 56)
    out = g.fit(_ramp(20, 44))
    assert out[0, 0, 1] < 10 and out[0, -1, 1] < 240  # the left edge kept, the right edge cut
    assert g.covered(20, 44) == (20, 40)


def test_an_image_of_another_aspect_is_enlarged_until_it_covers_then_cropped():
    g = Geometry.smaller_edge(56, 14, 56, 112)  # a 1:2 reference
    square = _ramp(80, 80)  # the official resize (56 x 56) would not cover 56 x 112
    assert g.resized(80, 80) == (112, 112)
    out = g.fit(square)
    assert out.shape == (56, 112, 3)
    assert g.covered(80, 80) == (40, 80)  # the top half is inspected
    assert out[-1, 0, 0] < 140  # the bottom row of the input is the middle of the frame
    tall = _ramp(200, 50)
    assert g.fit(tall).shape == (56, 112, 3) and g.resized(200, 50) == (448, 112)


def test_masks_are_fitted_like_their_images():
    g = Geometry.smaller_edge(28, 14, 20, 44)
    mask = np.zeros((20, 44), np.uint8)
    mask[5:10, 2:8] = 255  # inside the crop
    mask[:, 41:] = 255  # right of the crop: not inspected
    fitted = resize_mask(mask, g)
    assert fitted.shape == (28, 56) and fitted.dtype == bool
    rows, cols = np.nonzero(fitted)
    assert 6 <= rows.min() and rows.max() <= 14 and 2 <= cols.min() and cols.max() <= 12


def test_the_inspected_part_is_what_the_overlay_is_drawn_on():
    g = Geometry.smaller_edge(56, 14, 56, 112)
    frame = np.zeros((80, 80, 3), np.uint8)
    assert g.inspected(frame).shape == (40, 80, 3)
    assert geometry(56).inspected(frame).shape == (80, 80, 3)


def test_no_patch_at_the_resolution_is_one_line():
    from clipad.core.errors import ClipadError

    with pytest.raises(ClipadError, match="no 14 px patch"):
        Geometry.smaller_edge(10, 14, 100, 50)
