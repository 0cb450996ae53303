"""Dataset readers, the synthetic generator and the shared resize."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from clipad.core.errors import ClipadError
from clipad.data import load_split
from clipad.data.images import load_image, load_mask, resize_mask, resize_to_model
from clipad.data.synth import make_synthetic


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_synth_layout_and_masks(synth_root):
    split = load_split("mvtec", synth_root)
    assert sorted(split) == ["fabric", "washer"]
    fabric = split["fabric"]
    assert sum(s.label == 0 for s in fabric) == 3 and sum(s.label == 1 for s in fabric) == 4
    for s in fabric:
        if s.label:
            mask = np.asarray(Image.open(s.mask))
            assert set(np.unique(mask)) == {0, 255}
            assert Image.open(s.image).size == Image.open(s.mask).size == (160, 128)
            inside = np.asarray(Image.open(s.image).convert("RGB")).astype(int)[mask > 0]
            if s.defect == "scratch":  # a dark stroke
                assert inside.mean() < 60
            else:  # a red blob
                assert inside[:, 0].mean() > 150 and inside[:, 1].mean() < 100


def test_synth_is_deterministic(tmp_path):
    make_synthetic(tmp_path / "a", n_train=0, n_good=1, n_defect=1, seed=3)
    make_synthetic(tmp_path / "b", n_train=0, n_good=1, n_defect=1, seed=3)
    make_synthetic(tmp_path / "c", n_train=0, n_good=1, n_defect=1, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_synth_refuses_non_empty_out(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(ClipadError, match="not empty"):
        make_synthetic(tmp_path / "x", n_good=1, n_defect=1)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_visa_reader(tmp_path):
    img = np.zeros((20, 30, 3), np.uint8)
    _png(tmp_path / "candle/Data/Images/Normal/0.JPG", img)
    _png(tmp_path / "candle/Data/Images/Anomaly/1.JPG", img)
    _png(tmp_path / "candle/Data/Masks/Anomaly/1.png", img[..., 0])
    (tmp_path / "split_csv").mkdir()
    (tmp_path / "split_csv/1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,train,normal,candle/Data/Images/Normal/0.JPG,\n"
        "candle,test,normal,candle/Data/Images/Normal/0.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/1.JPG,candle/Data/Masks/Anomaly/1.png\n"
    )
    split = load_split("visa", tmp_path)
    assert [(s.label, s.mask is not None) for s in split["candle"]] == [(0, False), (1, True)]


def test_folder_reader_single_and_multi_category(tmp_path):
    img = np.zeros((10, 10, 3), np.uint8)
    _png(tmp_path / "gear/good/a.png", img)
    _png(tmp_path / "gear/dent/b.png", img)
    _png(tmp_path / "gear/dent/b_mask.png", img[..., 0])
    split = load_split("folder", tmp_path)
    samples = split["gear"]
    assert [(s.image.name, s.label, s.mask.name if s.mask else None) for s in samples] == [
        ("b.png", 1, "b_mask.png"),
        ("a.png", 0, None),
    ]
    assert list(load_split("folder", tmp_path / "gear")) == ["gear"]


def test_reader_errors(tmp_path, synth_root):
    with pytest.raises(ClipadError, match="not found"):
        load_split("mvtec", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipadError, match="empty"):
        load_split("mvtec", tmp_path / "empty")
    with pytest.raises(ClipadError, match="category 'bottle' not found.*available: fabric, washer"):
        load_split("mvtec", synth_root, ["bottle"])
    with pytest.raises(ClipadError, match="split file not found"):
        load_split("visa", synth_root)


def test_resize_is_squash_bicubic_in_native_mode(tmp_path):
    """Decode -> RGB -> resize gives a greyscale file the bytes of the official order (resize in
    'L', then replicate), and an RGB array plain PIL bicubic."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (50, 80), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    out = load_image(tmp_path / "grey.png", 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    expect = np.asarray(Image.fromarray(grey).resize((24, 24), Image.Resampling.BICUBIC))
    for c in range(3):  # resized in 'L', then replicated
        assert np.array_equal(out[..., c], expect)
    rgb = rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)
    assert np.array_equal(
        resize_to_model(rgb, 24), np.asarray(Image.fromarray(rgb).resize((24, 24), Image.Resampling.BICUBIC))
    )


def test_mask_resize_thresholds_bilinear_at_half():
    m = np.zeros((4, 4), np.uint8)
    m[:, :2] = 7  # any non-zero value is defect
    out = resize_mask(Image.fromarray(m), 8)
    assert out.dtype == bool and out[:, :3].all() and not out[:, 5:].any()
    # the boundary column is 50/50 in bilinear: 127.5 rounds to 128 >= 128
    assert out.sum() == 8 * 4


def test_mask_size_must_match_image(tmp_path):
    _png(tmp_path / "m.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(ClipadError, match="mask .* is 12x10 but its image is 20x10"):
        load_mask(tmp_path / "m.png", 8, expect_size=(20, 10))
