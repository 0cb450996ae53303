"""What the runtime refuses to trust: artifact files changed after export (never a silent fallback),
calibration constants that are not finite, image files beyond clipad's size limits, glob sources
with symlink loops, and prediction outputs that could not be written. Real artifacts of the tiny
model, real files, links and folders throughout."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from clipad.data import images as image_path
from clipad.data.images import ImageReadError, list_images, read_image, read_rgb
from clipad.data.synth import sample_images
from clipad.deploy.manifest import MANIFEST
from tests.helpers import assert_one_line_error, run, run_in_thread


def _images(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(sample_images(n)):
        cv2.imwrite(str(folder / f"x{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    return folder


def _copy(art, tmp_path: Path, name: str = "a") -> Path:
    dst = tmp_path / name
    shutil.copytree(art.root, dst)
    return dst


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
def test_a_tampered_or_missing_graph_stops_every_backend_choice(art, tmp_path, capsys, backend):
    """`--backend auto` once served the PyTorch reference when model.onnx failed its hash."""
    images = _images(tmp_path / "imgs", 2)
    copy = _copy(art, tmp_path)
    graph = copy / "model.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    for command in ("predict", "run"):
        where = ["--out", tmp_path / "p"] if command == "predict" else ["--events", tmp_path / "ev.jsonl"]
        args = [images] if command == "predict" else ["--source", images]
        code, _, err = run(capsys, command, *args, "--artifacts", copy, "--backend", backend, "--device", "cpu", *where)
        assert_one_line_error(code, err, f"{graph} does not match the sha256 in its manifest")
    graph.unlink()
    code, _, err = run(capsys, "predict", images, "--artifacts", copy, "--backend", backend, "--device", "cpu")
    assert_one_line_error(code, err, "has no model.onnx, which its manifest lists")
    assert not (tmp_path / "p").exists() and not (tmp_path / "ev.jsonl").exists()


def test_the_reference_backend_refuses_changed_text_features(art, tmp_path, capsys):
    images = _images(tmp_path / "imgs", 1)
    copy = _copy(art, tmp_path)
    feats = copy / "text_features.npy"
    feats.write_bytes(feats.read_bytes()[:-4] + b"\1\1\1\1")
    code, _, err = run(capsys, "predict", images, "--artifacts", copy, "--backend", "torch", "--device", "cpu")
    assert_one_line_error(code, err, "text_features.npy does not match the sha256")


# ---------------------------------------------------------------------------------------------------


def _calibrated(art, tmp_path: Path, threshold: float = 0.5) -> Path:
    """A copy of ``art`` with calibration constants written as `clipad calibrate` writes them."""
    from clipad.calibration.constants import MODEL_FILES
    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.manifest import CalibrationEntry

    copy = load_artifacts(_copy(art, tmp_path, "cal"))
    entry = CalibrationEntry.create(
        version=1,
        image_prob_range=[0.0, 1.0],
        map_max_range=[0.0, 4.0],
        threshold=threshold,
        score_range=[0.2, 1.4],
        pixel_threshold=1.0,
        method="false-positive rate 0.01 on the good images",
        pixel_method="false-positive rate 0.01 on the good images' pixels",
        target_fpr=0.01,
        achieved={"fpr": 0.0, "pixel_fpr": 0.01},
        set={"good": 100, "anomalous": 0, "skipped": 0},
        backend="onnxruntime fp32",
        model_files={n: copy.manifest.files.get(n) for n in MODEL_FILES},
        created="2026-01-01T00:00:00+0000",
    )
    copy.update(copy.manifest.with_calibration(entry))
    return copy.root


def _set_calibration(root: Path, **values) -> None:
    """Write ``values`` into the manifest's calibration as JSON tokens (NaN, Infinity) would carry them."""
    data = json.loads((root / MANIFEST).read_text())
    data["calibration"].update(values)
    (root / MANIFEST).write_text(json.dumps(data))


def test_non_finite_calibration_stops_predict_instead_of_labelling_normal(art, tmp_path, capsys):
    images = _images(tmp_path / "imgs", 2)
    root = _calibrated(art, tmp_path)
    code, _, err = run(capsys, "predict", images, "--artifacts", root, "--out", tmp_path / "ok", "--quiet")
    assert code == 0, err
    _set_calibration(root, threshold=float("nan"))
    code, _, err = run(capsys, "predict", images, "--artifacts", root, "--out", tmp_path / "p", "--quiet")
    assert_one_line_error(code, err, "manifest.json: calibration.threshold: must be a finite number")
    assert not (tmp_path / "p").exists()


NON_FINITE = [
    ("threshold", float("nan")),
    ("threshold", float("inf")),
    ("pixel_threshold", float("-inf")),
    ("image_prob_range", [float("nan"), 1.0]),
    ("map_max_range", [0.0, float("inf")]),
    ("score_range", [float("-inf"), 1.0]),
    ("achieved", {"fpr": float("nan")}),
]


@pytest.mark.parametrize("field, value", NON_FINITE, ids=[f"{f}={v}" for f, v in NON_FINITE])
def test_every_non_finite_calibration_value_is_refused_naming_the_field(art, tmp_path, field, value):
    from clipad.core.errors import ClipadError
    from clipad.deploy.artifacts import load_artifacts

    root = _calibrated(art, tmp_path)
    _set_calibration(root, **{field: value})
    with pytest.raises(ClipadError) as err:
        load_artifacts(root)
    assert f"manifest.json: calibration.{field}" in str(err.value) and "finite" in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_a_zero_width_score_range_is_refused(art, tmp_path):
    """The normalised score divides by the score range's width."""
    from clipad.core.errors import ClipadError
    from clipad.deploy.artifacts import load_artifacts

    root = _calibrated(art, tmp_path)
    _set_calibration(root, score_range=[0.7, 0.7])
    with pytest.raises(ClipadError, match=r"calibration.score_range: must be \[min, max\] with min < max"):
        load_artifacts(root)


# ---------------------------------------------------------------------------------------------------


def test_a_glob_source_with_symlink_loops_scores_each_file_once(art, tmp_path, capsys):
    """A self-link and a two-folder loop: `**` once followed them until the path grew too long
    (each image listed dozens of times with the self-link alone; exponentially many with both)."""
    root = _images(tmp_path / "line", 2)
    (root / "sub").mkdir()
    shutil.copy(root / "x0.png", root / "sub" / "y.png")
    (root / "self").symlink_to(".")
    (root / "sub" / "back").symlink_to("..")
    (root / "alias.png").symlink_to("x1.png")  # the same real file under another name
    spec = str(root / "**" / "*.png")
    listed = run_in_thread(lambda: list_images(spec), timeout=30)
    assert "error" not in listed, listed
    files = listed["result"]
    assert sorted(p.relative_to(root).as_posix() for p in files) == ["sub/y.png", "x0.png", "x1.png"]
    code, _, err = run(capsys, "run", "--source", spec, "--artifacts", art.root, "--events", tmp_path / "ev.jsonl")
    assert code == 0, err
    sources = [json.loads(ln)["source"] for ln in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert sorted(Path(s).relative_to(root).as_posix() for s in sources) == ["sub/y.png", "x0.png", "x1.png"]


def test_a_folder_source_lists_a_linked_file_once(tmp_path):
    root = _images(tmp_path / "line", 2)
    (root / "alias.png").symlink_to(root / "x0.png")
    assert [p.name for p in list_images(root)] == ["x0.png", "x1.png"]


# ---------------------------------------------------------------------------------------------------


def test_a_failed_overlay_or_mask_write_fails_predict_in_one_line(art, tmp_path, capsys):
    """cv2.imwrite says False instead of raising: the record once named a file never written. A
    file name one step too long for the file system is a real failure (also as root): the source
    names fit in 255 bytes, its mask's name and a second overlay of the same stem do not."""
    stem = "y" * 250
    images = _images(tmp_path / "imgs", 2)
    shutil.copy(images / "x0.png", images / f"{stem}.png")
    (images / "sub").mkdir()
    shutil.copy(images / "x1.png", images / "sub" / f"{stem}.png")
    out = tmp_path / "p"
    code, _, err = run(capsys, "predict", images, "--artifacts", art.root, "--out", out, "--save-overlays", "--quiet")
    assert_one_line_error(code, err, f"cannot write {out / 'overlays' / (stem + '_2.png')}")
    assert not out.exists()  # nothing of the failed run is left
    root = _calibrated(art, tmp_path)
    code, _, err = run(capsys, "predict", images, "--artifacts", root, "--out", out, "--save-maps", "--quiet")
    assert_one_line_error(code, err, f"cannot write {out / 'maps' / (stem + '_mask.png')}")
    assert not out.exists()


def test_unwritable_predict_outputs_are_one_line_naming_the_path(art, tmp_path, capsys):
    images = _images(tmp_path / "imgs", 1)
    (tmp_path / "file").write_text("not a folder")
    code, _, err = run(capsys, "predict", images, "--artifacts", art.root, "--out", tmp_path / "file", "--quiet")
    assert_one_line_error(code, err, f"--out {tmp_path / 'file'} is a file")
    code, _, err = run(capsys, "predict", images, "--artifacts", art.root, "--out", tmp_path / "file" / "p", "--quiet")
    assert_one_line_error(code, err, f"{tmp_path / 'file'} is a file, not a folder")
    out = tmp_path / "p"
    out.mkdir()
    (out / "maps").write_text("a file where the maps folder belongs")
    code, _, err = run(capsys, "predict", images, "--artifacts", art.root, "--out", out, "--save-maps", "--quiet")
    assert_one_line_error(code, err, f"--out {out} is not empty and was not written by clipad")
    assert (out / "maps").read_text() == "a file where the maps folder belongs"


# ---------------------------------------------------------------------------------------------------


def _png_header_image(path: Path, width: int, height: int, mode: str = "L") -> Path:
    """A black greyscale PNG of ``width`` x ``height`` written row by row (a few hundred KB on disk)."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + one grey byte a pixel
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_the_documented_pixel_limit_is_the_one_that_applies(tmp_path):
    """15000 x 15000 (225 Mpx) is within clipad's 16384 x 16384 but above PIL's own 179 Mpx bomb
    error; 17000 x 17000 is above clipad's limit and refused from the header, in clipad's words."""
    inside = _png_header_image(tmp_path / "inside.png", 15000, 15000)
    assert read_rgb(inside).shape == (15000, 15000, 3)
    above = _png_header_image(tmp_path / "above.png", 17000, 17000)
    with pytest.raises(ImageReadError, match=f"17000x17000 pixels is more than the limit of {image_path.MAX_PIXELS}"):
        read_image(above)


def test_wide_sample_images_are_bounded_from_the_header(tmp_path):
    """A float TIFF of 13000 x 13000 is 1 MB on disk and gigabytes decoded: refused before decoding."""
    from PIL import Image

    small = Image.fromarray(np.full((16, 16), 0.5, np.float32), mode="F")
    small.save(tmp_path / "small.tif", compression="tiff_deflate")
    assert read_rgb(tmp_path / "small.tif")[0, 0].tolist() == [128, 128, 128]
    big = tmp_path / "big.tif"
    Image.new("F", (13000, 13000)).save(big, compression="tiff_deflate")
    assert big.stat().st_size < 4_000_000
    with pytest.raises(ImageReadError, match="13000x13000 pixels of 32-bit samples is more than the limit"):
        read_image(big)
