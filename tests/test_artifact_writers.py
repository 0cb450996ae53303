"""Writers of one artifact directory: one at a time, no lost update, and a re-export that
swaps the directory in one step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipad.calibration.calibrate import calibrate
from clipad.calibration.int8 import make_int8
from clipad.core.owned import exchange_dirs
from clipad.core.progress import Tasks
from clipad.data.images import read_model_images
from clipad.deploy.artifacts import artifact_lock, load_artifacts
from clipad.runtime.backends import open_backend
from tests.helpers import TINY, assert_one_line_error, fresh, run


def test_a_second_writer_is_refused_in_one_line(setup, tmp_path, capsys):  # noqa: F811
    art = fresh(setup, tmp_path)
    before = (art / "manifest.json").read_text()
    with artifact_lock(art):  # another command is writing this directory
        code, _, err = run(capsys, "calibrate", "--artifacts", art, "--good", setup / "cal", "--quiet")
        assert_one_line_error(code, err, "another clipad command (export or calibrate) is writing")
        code, _, err = run(capsys, "export", "--category", "fabric", "--precision", "fp32", "--out", art, *TINY)
        assert_one_line_error(code, err, "is writing")
    assert (art / "manifest.json").read_text() == before  # nothing was written
    code, _, err = run(capsys, "calibrate", "--artifacts", art, "--good", setup / "cal", "--quiet")
    assert code == 0, err  # free again


def test_an_update_made_meanwhile_is_not_lost(setup, tmp_path):  # noqa: F811
    """Two commands opened the directory; the second writer works on the manifest as it is on
    disk when it takes the lock, so the first one's INT8 graph survives the calibration."""
    root = fresh(setup, tmp_path)
    stale = load_artifacts(root)  # opened (e.g. by `clipad calibrate`) before the INT8 graph exists
    other = load_artifacts(root)
    make_int8(other, read_model_images(setup / "cal", other.geometry, 8), Tasks(None), min_agreement=0.0)
    with open_backend(stale, "onnxruntime", "fp32", "cpu") as backend:
        calibrate(stale, backend, str(setup / "cal"), Tasks(None), target_fpr=0.1)
    m = load_artifacts(root).manifest
    assert "int8" in m.precisions and m.parity.figures("int8") is not None and m.calibration is not None
    assert json.loads((root / "manifest.json").read_text())["files"]["model.int8.onnx"] == m.files["model.int8.onnx"]


def test_exchange_swaps_two_directories_in_one_step(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "old").write_text("1")
    (tmp_path / "b" / "new").write_text("2")
    if not exchange_dirs(tmp_path / "a", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available on this platform or file system")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["new"] and [p.name for p in (tmp_path / "b").iterdir()] == [
        "old"
    ]


def test_re_export_replaces_the_directory_and_leaves_nothing_beside_it(setup, tmp_path, capsys):  # noqa: F811
    art = fresh(setup, tmp_path)
    code, _, err = run(
        capsys, "export", "--category", "fabric", "--precision", "fp32", "--out", art, "--seed", "5", *TINY
    )
    assert code == 0, err
    m = load_artifacts(art).manifest
    assert m.weights.seed == 5  # the new export, in place
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.lock", "art"]  # no partial or old copy beside it
    x = read_model_images(setup / "cal", m.image_size, 2)
    amap, _ = open_backend(load_artifacts(art), "onnxruntime", "fp32", "cpu")(x)
    assert np.isfinite(amap).all()
