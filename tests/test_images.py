"""The one image path: `clipad eval`, `clipad run` and `clipad predict` give the model the same
bytes for the same file, whatever its mode, and greyscale/RGB files keep the official bytes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from clipad.core.progress import Tasks
from clipad.data import Sample, load_batch
from clipad.data.images import iter_image_batches, list_images, read_rgb
from clipad.runtime.backends import open_backend
from clipad.runtime.pipeline import Pipeline
from clipad.runtime.predict import predict
from clipad.runtime.sources import ImageFilesSource

SIZE = 96


def deep16(rgb: np.ndarray) -> np.ndarray:
    """A 16-bit grey image whose low byte carries information too."""
    return np.minimum(rgb[..., 0].astype(np.uint32) * 257 + 100, 65535).astype(np.uint16)


def write_files(folder: Path) -> list[Path]:
    """One file per kind, 80 x 50 pixels with structure in every channel."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:50, 0:80]
    rgb = np.stack([(xx * 3) % 256, (yy * 5) % 256, (xx + yy) % 256], -1).astype(np.uint8)
    rgb = np.clip(rgb.astype(int) + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / "rgb.png")
    rgba = np.dstack([rgb, (xx * 3 % 256).astype(np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).quantize(64).save(folder / "palette.png")
    Image.fromarray(rgb[..., 1], mode="L").save(folder / "grey.png")
    cv2.imwrite(str(folder / "deep16.png"), deep16(rgb))
    Image.fromarray(rgb).save(folder / "photo.jpg", quality=85)
    return sorted(folder.iterdir())


class Recording:
    """Wraps a real backend and keeps every batch it is given (the bytes the model sees)."""

    def __init__(self, backend):
        self.backend, self.seen = backend, []
        self.max_batch, self.name, self.precision = backend.max_batch, backend.name, backend.precision

    def __call__(self, images):
        self.seen.append(images.copy())
        return self.backend(images)

    def describe(self):
        return self.backend.describe()

    def close(self):
        self.backend.close()


def test_file_kinds_are_decoded_to_rgb(tmp_path):
    files = {p.name: p for p in write_files(tmp_path)}
    modes = {name: Image.open(p).mode for name, p in files.items()}
    assert modes == {
        "rgb.png": "RGB",
        "rgba.png": "RGBA",
        "palette.png": "P",
        "grey.png": "L",
        "deep16.png": "I;16",
        "photo.jpg": "RGB",
    }
    rgb = read_rgb(files["rgb.png"])
    assert rgb.shape == (50, 80, 3) and rgb.dtype == np.uint8
    assert np.array_equal(read_rgb(files["rgba.png"]), rgb)  # alpha dropped, colour kept
    grey = read_rgb(files["grey.png"])
    assert np.array_equal(grey[..., 0], grey[..., 2]) and np.array_equal(grey[..., 0], rgb[..., 1])
    deep = read_rgb(files["deep16.png"])  # 16-bit scaled by 1/257, not clipped at 255
    assert np.array_equal(deep[..., 0], (deep16(rgb) // 257).astype(np.uint8))
    palette = read_rgb(files["palette.png"])  # palette expanded to its colours
    assert np.abs(palette.astype(int) - rgb).mean() < 12


def test_eval_run_and_predict_feed_the_model_the_same_bytes(art, tmp_path):  # noqa: F811
    files = write_files(tmp_path / "imgs")
    size = art.manifest.image_size
    images, kept, _ = load_batch([Sample(p, 0, None, "good", "x") for p in files], size, skipped=[])
    assert [s.image for s in kept] == files
    evaluated = np.stack(images)  # what run_category hands to SDPModel

    backend = Recording(open_backend(art, "onnxruntime", "fp32", "cpu"))
    Pipeline(
        backend, [ImageFilesSource(str(tmp_path / "imgs"))], size, None, [], status_every=1e9, log=lambda s: None
    ).run()
    streamed = np.concatenate(backend.seen)

    backend.seen.clear()
    predict(backend, str(tmp_path / "imgs"), tmp_path / "p", size, None, Tasks(None))
    predicted = np.concatenate(backend.seen)

    batched = np.concatenate([b.images for b in iter_image_batches(list_images(tmp_path / "imgs"), size, 4)])
    for name, got in (("run", streamed), ("predict", predicted), ("calibrate/int8/parity", batched)):
        assert got.dtype == np.uint8 and got.shape == evaluated.shape, name
        assert np.array_equal(got, evaluated), f"{name} feeds other bytes than eval"


@pytest.mark.parametrize("name", ["rgb.png", "grey.png"])
def test_rgb_and_grey_files_keep_the_official_bytes(tmp_path, name):
    """The official order (resize in the file's own mode, then RGB) and ours agree on these."""
    path = next(p for p in write_files(tmp_path) if p.name == name)
    official = np.asarray(Image.open(path).resize((SIZE, SIZE), Image.Resampling.BICUBIC).convert("RGB"))
    images, _, _ = load_batch([Sample(path, 0, None, "good", "x")], SIZE, skipped=[])
    assert np.array_equal(images[0], official)
