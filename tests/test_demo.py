"""`clipad demo`: the offline end-to-end run in the normal-reference mode, its picture, and its
detection figures (recomputed here from the files it wrote, independently of the demo's code).

One demo run (the tiny model, random weights, 12 video frames) serves every test but the error
case. Measured on it (2026-12-02): image AUROC 0.944, pixel AUROC 0.967 over 12 good and 12
defective washer parts. The zero-shot export the demo used before gives 0.688 and 0.789 on this
very set, so the thresholds below (0.8 and 0.9) fail a demo whose maps say nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from clipad.deploy.artifacts import load_artifacts
from tests.helpers import assert_one_line_error, run

FRAMES = 12


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`clipad demo --out D --frames 12 --quiet` run once: (exit code, stdout, stderr, D)."""
    from clipad import cli

    d = tmp_path_factory.mktemp("demo") / "d"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.run(["demo", "--out", str(d), "--frames", str(FRAMES), "--quiet"])
    return code, out.getvalue(), err.getvalue(), d


def report_of(d: Path) -> dict:
    return json.loads((d / "report.json").read_text())


def test_demo_runs_offline_end_to_end(demo):
    code, out, err, d = demo
    assert code == 0, err
    report = report_of(d)
    assert report["runtime"]["frames"] == FRAMES and report["predictions"] == 24
    assert report["test_images"] == {"good": 12, "defective": 12}
    assert len((d / "events.jsonl").read_text().splitlines()) == FRAMES
    cap = cv2.VideoCapture(str(d / report["video"]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == FRAMES
    manifest = load_artifacts(d / "artifacts" / "washer").manifest
    assert manifest.weights.source == "random" and report["mode"] == "reference"
    assert manifest.reference is not None and len(manifest.reference.images) == 8
    # the reference images are not among the good images calibration read
    assert not {p.name for p in (d / "reference_good").iterdir()} & {
        p.name for p in (d / "data" / "washer" / "train" / "good").iterdir()
    }
    md = (d / "report.md").read_text()
    assert "only the reference (nearest-neighbour) signal is meaningful" in md
    assert "Zero-shot (text) scores would be meaningless" in md
    assert "random weights" in err and "report" in out


def test_demo_picture(demo):
    """The PNG decodes to the grid: 3 rows (image, ground truth, heatmap) of 6 panels (3 good
    parts, then 3 defective) of 200 x 160 pixels, 6-pixel gaps, a 112-pixel label column and a
    44-pixel caption band: 1348 x 548."""
    _, _, _, d = demo
    report = report_of(d)
    assert report["picture"] == str(d / "demo.png")
    img = cv2.imread(str(d / "demo.png"), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (548, 1348, 3)
    assert "](demo.png)" in (d / "report.md").read_text()
    truth_row = img[6 + 166 : 6 + 166 + 160]
    columns = [truth_row[:, 112 + i * 206 : 112 + i * 206 + 200] for i in range(6)]
    assert all(c.max() < 40 for c in columns[:3])  # good parts: an empty mask
    assert all((c > 200).all(axis=2).mean() > 0.005 for c in columns[3:])  # defective: white defect pixels


def test_demo_aurocs_equal_a_recomputation(demo):
    """Image AUROC of the fused score and pixel AUROC of the saved maps, from predictions.jsonl
    and the dataset's masks, with scikit-learn and PIL only."""
    _, _, _, d = demo
    report = report_of(d)
    pred = d / "predictions"
    records = [json.loads(line) for line in (pred / "predictions.jsonl").read_text().splitlines()]
    labels, fused, masks, maps = [], [], [], []
    for r in records:
        src = Path(r["source"])
        amap = np.load(pred / r["files"]["map"])
        side = amap.shape[0]
        labels.append(src.parent.name != "good")
        fused.append(r["fused"])
        maps.append(amap)
        if src.parent.name == "good":
            masks.append(np.zeros((side, side), bool))
        else:
            mask = Image.open(d / "data" / "washer" / "ground_truth" / src.parent.name / f"{src.stem}_mask.png")
            masks.append(np.asarray(mask.convert("L").resize((side, side), Image.Resampling.BILINEAR)) >= 128)
    assert sum(labels) == 12 and len(labels) == 24
    image_auroc = roc_auc_score(labels, fused)
    pixel_auroc = roc_auc_score(np.stack(masks).ravel(), np.stack(maps).ravel())
    assert report["image_auroc"] == pytest.approx(image_auroc, abs=1e-9)
    assert report["pixel_auroc"] == pytest.approx(pixel_auroc, abs=1e-9)
    md = (d / "report.md").read_text()
    assert f"image AUROC {image_auroc:.3f}" in md and f"pixel AUROC {pixel_auroc:.3f}" in md


def test_demo_detects_the_defects(demo):
    """Random weights, but the reference maps find the synthetic defects (measured 0.944 / 0.967)."""
    _, _, _, d = demo
    report = report_of(d)
    assert report["image_auroc"] > 0.8
    assert report["pixel_auroc"] > 0.9


def test_demo_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = run(capsys, "demo", "--out", tmp_path / "f", "--quiet")
    assert_one_line_error(code, err, "is a file")


def test_a_file_of_the_users_in_a_demo_folder_stops_the_next_demo(demo, capsys):
    """The demo replaces its own earlier output only: a file it did not write is never deleted."""
    _, _, _, d = demo
    mine = d / "data" / "washer" / "notes.txt"
    mine.write_text("mine")
    try:
        code, _, err = run(capsys, "demo", "--out", d, "--frames", "2", "--quiet")
        assert_one_line_error(code, err, "clipad did not write (data/washer/notes.txt)")
        assert mine.read_text() == "mine" and (d / "report.md").is_file()
    finally:
        mine.unlink()
