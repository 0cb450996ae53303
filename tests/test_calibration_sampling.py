"""Calibration's pixel sampling (README: "Up to 16384 pixels per image are sampled (fixed seed)").

The tiny model's 96 px images (9216 pixels) never reach the sampling branch, and the full
ViT-B-16-plus-240 is too slow here, so ``observe`` is driven by a small deterministic scoring
model written below: the thing under test is the sampling, not a model. Its anomaly map encodes
each pixel's flat index (and one bit of the image it came from), so every sampled value says
which pixel of which image it is; masks are random patterns, so a label sampled at another
index than its value shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipad.calibration import calibrate as cal_mod
from clipad.calibration.calibrate import observe
from clipad.core.progress import Tasks

SAMPLED = 16384  # README


class IndexModel:
    """A scoring model for calibration (``max_batch``, ``__call__``, ``describe``):
    anomaly_map[b, y, x] = y * S + x + 0.25 * (red of image b at (y, x) > 127), exact in float32
    (S * S < 2**16 leaves two fraction bits); image_prob = the image's mean / 255."""

    def __init__(self, max_batch: int):
        self.max_batch = max_batch
        self.batches: list[int] = []

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[3] == 3
        self.batches.append(len(images))
        b, s = images.shape[:2]
        index = np.arange(s * s, dtype=np.float32).reshape(1, s, s)
        amap = index + np.float32(0.25) * (images[..., 0] > 127)
        prob = images.reshape(b, -1).mean(axis=1) / 255
        return amap.astype(np.float32), prob.astype(np.float32)

    def describe(self) -> str:
        return "index model (test)"


def make_set(root: Path, size: int, seed: int = 0) -> dict:
    """3 good images, 4 anomalous (the second one unreadable) with random masks, all size x size."""
    rng = np.random.default_rng(seed)
    sets = {"good": root / "good", "bad": root / "bad", "masks": root / "masks"}
    for p in sets.values():
        p.mkdir(parents=True)
    images, masks = {}, {}
    for name, folder in [(f"g{i}", sets["good"]) for i in range(3)] + [(f"a{i}", sets["bad"]) for i in range(4)]:
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        path = folder / f"{name}.png"
        if name == "a1":
            path.write_bytes(b"\x89PNG\r\n\x1a\n cut short")
        else:
            Image.fromarray(img).save(path)
            images[name] = img
        if folder == sets["bad"]:
            m = rng.random((size, size)) < 0.3
            Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(sets["masks"] / f"{name}_mask.png")
            masks[name] = m
    return {**sets, "images": images, "masks_of": masks}


def run_observe(data: dict, size: int, max_batch: int, with_masks: bool = True):
    model = IndexModel(max_batch)
    obs = observe(
        model,
        str(data["good"]),
        str(data["bad"]) if with_masks else None,
        data["masks"] if with_masks else None,
        size,
        Tasks(None),
    )
    return obs, model


ORDER = ["g0", "g1", "g2", "a0", "a2", "a3"]  # file order, a1 unreadable


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("s240"), 240)


def test_240px_samples_16384_pixels_at_fixed_shared_indices(big):
    assert cal_mod.PIXELS_PER_IMAGE == SAMPLED
    size = 240
    obs, model = run_observe(big, size, max_batch=2)
    assert model.batches == [2, 1, 1, 2]  # batch boundaries inside both sets (a1 skipped in the first bad batch)
    assert [Path(f).stem for f in obs.files] == ORDER and len(obs.skipped) == 1 and "a1.png" in obs.skipped[0]
    assert obs.label.tolist() == [0, 0, 0, 1, 1, 1]
    assert obs.pixels.shape == (6, SAMPLED) and obs.pixel_label.shape == (6, SAMPLED)
    idx = np.floor(obs.pixels).astype(np.int64)
    # the same pixel indices for every image, distinct, and spread over the whole image
    assert all(np.array_equal(idx[0], row) for row in idx)
    assert len(np.unique(idx[0])) == SAMPLED and idx.min() >= 0 and idx.max() < size * size
    assert len(np.unique(idx[0] // size)) == size  # every image row contributes (not the first 16384 pixels)
    # each sampled value is that image's own map value at that index
    for i, name in enumerate(ORDER):
        expected = (big["images"][name][..., 0] > 127).ravel()[idx[i]] * 0.25
        assert np.array_equal(obs.pixels[i] - idx[i], expected.astype(np.float32)), name
    # pixel labels sampled at the same indices as the map values, from each image's own mask
    for i, name in enumerate(ORDER):
        if name.startswith("g"):
            assert not obs.pixel_label[i].any()
        else:
            assert np.array_equal(obs.pixel_label[i], big["masks_of"][name].ravel()[idx[i]]), name
    # ... which a label from another mask, or from unsampled positions, would not match
    assert not np.array_equal(big["masks_of"]["a0"].ravel()[idx[3]], big["masks_of"]["a2"].ravel()[idx[3]])
    assert not np.array_equal(big["masks_of"]["a0"].ravel()[:SAMPLED], obs.pixel_label[3])


def test_240px_sampling_is_the_same_on_every_run(big):
    """Fixed seed: the global NumPy state and the batch size change nothing."""
    state = np.random.get_state()
    try:
        np.random.seed(1)
        first, _ = run_observe(big, 240, max_batch=2)
        np.random.seed(2)
        np.random.random(1000)
        second, _ = run_observe(big, 240, max_batch=3)
    finally:
        np.random.set_state(state)
    assert np.array_equal(first.pixels, second.pixels)
    assert np.array_equal(first.pixel_label, second.pixel_label)


def test_240px_good_only_is_sampled_too(big):
    obs, _ = run_observe(big, 240, max_batch=4, with_masks=False)
    assert obs.pixel_label is None and obs.pixels.shape == (3, SAMPLED)
    with_masks, _ = run_observe(big, 240, max_batch=4)
    assert np.array_equal(obs.pixels, with_masks.pixels[:3])  # the same indices with and without masks


@pytest.mark.parametrize("size", [96, 128])  # 9216 pixels (the tiny model) and exactly 16384
def test_small_images_use_every_pixel_in_order(tmp_path, size):
    data = make_set(tmp_path, size, seed=size)
    obs, _ = run_observe(data, size, max_batch=2)
    assert obs.pixels.shape == (6, size * size) and obs.pixel_label.shape == (6, size * size)
    for i, name in enumerate(ORDER):
        img = data["images"][name]
        expected = np.arange(size * size, dtype=np.float32) + np.float32(0.25) * (img[..., 0] > 127).ravel()
        assert np.array_equal(obs.pixels[i], expected), name
        mask = data["masks_of"].get(name, np.zeros((size, size), bool))
        assert np.array_equal(obs.pixel_label[i], mask.ravel()), name
