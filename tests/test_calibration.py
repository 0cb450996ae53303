"""`clipad calibrate` on tiny artifacts (random weights) and the synthetic set: thresholds from
good images hold their false-positive rate on held-out good images, the labelled threshold is
the F1-optimal one, the runtime follows the constants, stale or degenerate inputs fail clearly,
and the INT8 graph is measured against FP32 and gated on agreement."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from clipad.calibration.thresholds import f1_threshold, fpr_threshold, min_images_for_fpr, normalised_score
from clipad.data.images import list_images, load_image
from clipad.deploy.artifacts import load_artifacts
from clipad.runtime.backends import open_backend
from tests.helpers import TINY, assert_one_line_error, fresh, run


def outputs(art_dir, spec):
    """image_prob, map_max and maps straight from the backend (the independent side of the checks)."""
    art = load_artifacts(art_dir)
    be = open_backend(art, "onnxruntime", "fp32", "cpu")
    x = np.stack([load_image(p, art.geometry) for p in list_images(spec)])
    amap, prob = be(x)
    return prob.astype(np.float64), amap.reshape(len(amap), -1).max(1).astype(np.float64), amap


def test_threshold_rules_on_small_arrays():
    s = np.arange(10, dtype=float)  # 0..9
    assert fpr_threshold(s, 0.2) == 7.5 and np.mean(s >= 7.5) == 0.2
    assert fpr_threshold(s, 0.01) == 9.5  # k = 0: half a gap above the maximum
    assert min_images_for_fpr(0.01) == 100 and min_images_for_fpr(0.1) == 10
    t, f1 = f1_threshold(np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.2, 0.8, 0.7, 0.75, 0.9]))
    assert t == 0.7 and f1 == pytest.approx(6 / 7)
    assert list(normalised_score(np.array([0.0, 1.0, 2.0, 9.0]), 1.0, (0.0, 2.0))) == [0.0, 0.5, 1.0, 1.0]


def test_good_only_threshold_holds_its_rate_on_held_out_images(setup, tmp_path, capsys):
    """Target FPR 0.1, 200 calibration and 200 held-out good images. Tolerance 0.09: three
    standard deviations of the difference of two binomial estimates, sqrt(0.1 * 0.9 * (1/200 + 1/200))."""
    art = fresh(setup, tmp_path)
    code, out, err = run(
        capsys, "calibrate", "--artifacts", art, "--good", setup / "cal", "--target-fpr", 0.1, "--quiet"
    )
    assert code == 0, err
    c = json.loads((art / "manifest.json").read_text())["calibration"]
    assert c["set"]["good"] == 200 and c["set"]["anomalous"] == 0 and len(c["set"]["sha256"]) == 64
    assert 0.1 - 1 / 200 <= c["achieved"]["fpr"] <= 0.1
    assert "warning" not in err  # 200 >= 10 images needed for 0.1
    code, _, err = run(capsys, "predict", str(setup / "held"), "--artifacts", art, "--out", tmp_path / "p", "--quiet")
    assert code == 0, err
    recs = [json.loads(line) for line in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    held_fpr = np.mean([r["label"] == "anomalous" for r in recs])
    assert abs(held_fpr - 0.1) <= 0.09, held_fpr
    # the pixel threshold holds its rate on the calibration pixels
    assert abs(c["achieved"]["pixel_fpr"] - 0.1) < 0.01


def test_labelled_threshold_is_the_f1_optimal_one(setup, tmp_path, capsys):
    art = fresh(setup, tmp_path)
    s = setup / "s" / "fabric"
    anomalous = str(s / "test" / "[!g]*" / "*.png")
    code, out, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        art,
        "--good",
        setup / "cal",
        "--anomalous",
        anomalous,
        "--masks",
        s / "ground_truth",
        "--quiet",
    )
    assert code == 0, err
    c = json.loads((art / "manifest.json").read_text())["calibration"]
    assert c["set"] == {**c["set"], "good": 200, "anomalous": 12}
    # Independently: raw outputs, the paper's min-max over the whole set, then F1 of every candidate.
    pg, mg, amg = outputs(art, setup / "cal")
    pa, ma, ama = outputs(art, anomalous)
    prob, mmax = np.concatenate([pg, pa]), np.concatenate([mg, ma])
    labels = np.r_[np.zeros(len(pg)), np.ones(len(pa))]
    fused = (prob - prob.min()) / (prob.max() - prob.min()) + (mmax - mmax.min()) / (mmax.max() - mmax.min())
    cands = np.unique(fused)
    f1s = [f1_score(labels, fused >= t) for t in cands]
    best = cands[int(np.argmax(f1s))]
    assert c["threshold"] == pytest.approx(best, abs=1e-9) and c["achieved"]["f1"] == pytest.approx(max(f1s))
    # The pixel threshold beats a grid of alternatives on the same pixels (F1 on the masks).
    from clipad.data.images import load_mask

    masks = [
        load_mask(s / "ground_truth" / p.parent.name / f"{p.stem}_mask.png", 96)
        for p in sorted(s.glob("test/[!g]*/*.png"))
    ]
    pix = np.concatenate([amg.ravel(), ama.ravel()])
    plab = np.concatenate([np.zeros(amg.size, bool), np.stack(masks).ravel()])
    best_pixel = f1_score(plab, pix >= c["pixel_threshold"])
    assert best_pixel == pytest.approx(c["achieved"]["pixel_f1"], abs=1e-6)
    assert all(f1_score(plab, pix >= t) <= best_pixel + 1e-9 for t in np.quantile(pix, np.linspace(0.5, 0.999, 40)))


def test_runtime_follows_the_constants(setup, tmp_path, capsys):
    art = fresh(setup, tmp_path)
    assert run(capsys, "calibrate", "--artifacts", art, "--good", setup / "cal", "--target-fpr", 0.2, "--quiet")[0] == 0
    c = json.loads((art / "manifest.json").read_text())["calibration"]
    code, _, err = run(
        capsys,
        "predict",
        str(setup / "s" / "fabric" / "test"),
        "--artifacts",
        art,
        "--out",
        tmp_path / "p",
        "--save-maps",
        "--quiet",
    )
    assert code == 0, err
    recs = [json.loads(line) for line in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    (plo, phi), (mlo, mhi) = c["image_prob_range"], c["map_max_range"]
    for r in recs:
        fused = (r["image_prob"] - plo) / (phi - plo) + (r["map_max"] - mlo) / (mhi - mlo)
        assert r["fused"] == pytest.approx(fused, abs=1e-6)
        assert r["label"] == ("anomalous" if fused >= c["threshold"] else "normal")
        assert 0 <= r["score"] <= 1 and (r["score"] >= 0.5) == (r["label"] == "anomalous")
    assert {r["label"] for r in recs} == {"normal", "anomalous"}  # both sides of the threshold occur
    stem = "000"
    amap = np.load(tmp_path / "p" / "maps" / f"{stem}.npy")
    mask = np.asarray(Image.open(tmp_path / "p" / "maps" / f"{stem}_mask.png")) > 0
    assert np.array_equal(mask, amap >= c["pixel_threshold"])
    assert recs[0]["defect_area"] == pytest.approx(mask.mean())
    # the streaming runtime labels frames with the same constants
    code, _, err = run(
        capsys,
        "run",
        "--source",
        str(setup / "s" / "fabric" / "test"),
        "--artifacts",
        art,
        "--events",
        tmp_path / "e.jsonl",
    )
    assert code == 0, err
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [e["label"] for e in events] == [r["label"] for r in recs]


def test_stale_constants_are_refused(setup, tmp_path, capsys):
    a = fresh(setup, tmp_path, "a")
    assert run(capsys, "calibrate", "--artifacts", a, "--good", setup / "cal", "--quiet")[0] == 0
    b = tmp_path / "b"  # another model (other random weights), given a's constants by hand
    assert run(capsys, "export", "--category", "fabric", "--precision", "fp32", "--out", b, "--seed", 7, *TINY)[0] == 0
    mb = json.loads((b / "manifest.json").read_text())
    mb["calibration"] = json.loads((a / "manifest.json").read_text())["calibration"]
    (b / "manifest.json").write_text(json.dumps(mb))
    code, _, err = run(capsys, "predict", str(setup / "held"), "--artifacts", b, "--out", tmp_path / "p", "--quiet")
    assert_one_line_error(code, err, "made for another model")


def test_bad_calibration_sets(setup, tmp_path, capsys):
    art = fresh(setup, tmp_path)
    same = tmp_path / "same"
    same.mkdir()
    for i in range(5):
        shutil.copy(setup / "cal" / "000.png", same / f"{i}.png")
    code, _, err = run(capsys, "calibrate", "--artifacts", art, "--good", same, "--quiet")
    assert_one_line_error(code, err, "same image_prob")
    assert json.loads((art / "manifest.json").read_text())["calibration"] is None  # nothing written
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted((setup / "cal").iterdir())[:20]:
        shutil.copy(f, few / f.name)
    Image.new("L", (300, 200), 90).save(few / "grey.png")  # a grey image of another size works
    code, out, err = run(capsys, "calibrate", "--artifacts", art, "--good", few, "--quiet")
    assert code == 0, err
    assert "only 21 good images" in err and "needs at least 100" in err
    code, _, err = run(capsys, "calibrate", "--artifacts", art, "--quiet")
    assert_one_line_error(code, err, "give --good")
    code, _, err = run(capsys, "calibrate", "--artifacts", art, "--good", few, "--target-fpr", 1.5, "--quiet")
    assert_one_line_error(code, err, "--target-fpr must be a finite number in [1e-06, 0.5]")
    code, _, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        art,
        "--good",
        few,
        "--anomalous",
        setup / "cal",
        "--masks",
        tmp_path,
        "--quiet",
    )
    assert_one_line_error(code, err, "no mask for")


def test_int8_graph_is_measured_gated_and_served(setup, tmp_path, capsys):
    art = fresh(setup, tmp_path)
    code, _, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        art,
        "--int8",
        "--images",
        setup / "cal",
        "--int8-max-images",
        16,
        "--min-agreement",
        1.0,
        "--quiet",
    )
    assert_one_line_error(code, err, "not written, keep using FP32")
    assert not (art / "model.int8.onnx").exists() and "int8" not in load_artifacts(art).manifest.precisions
    code, out, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        art,
        "--int8",
        "--images",
        setup / "cal",
        "--int8-max-images",
        16,
        "--min-agreement",
        0.5,
        "--quiet",
    )
    assert code == 0, err
    assert "pre-processing" not in err  # ONNX Runtime's quantiser advice stays out of the user's output
    m = load_artifacts(art)
    f = m.manifest.parity.figures("int8")
    assert "model.int8.onnx" in m.manifest.files and m.manifest.precisions[-1] == "int8"
    assert f.top1pct_agreement >= 0.5 and 0 < f.rel_l2 < 1  # quantised: close, not equal
    x = np.stack([load_image(p, 96) for p in sorted((setup / "held").iterdir())[:4]])
    amap, prob = open_backend(m, "onnxruntime", "int8", "cpu")(x)
    assert amap.shape == (4, 96, 96) and np.isfinite(amap).all()
    import onnx

    ops = {n.op_type for n in onnx.load(str(art / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    code, out, err = run(capsys, "parity", "--artifacts", art, "--backends", "onnxruntime")
    assert "int8" in out
    # served on request only, and calibrated with it when asked
    code, _, err = run(
        capsys, "calibrate", "--artifacts", art, "--good", setup / "cal", "--precision", "int8", "--quiet"
    )
    assert code == 0 and "backend: onnxruntime int8" in err, err
    code, _, err = run(capsys, "predict", str(setup / "held"), "--artifacts", art, "--out", tmp_path / "p", "--quiet")
    assert code == 0 and "onnxruntime fp32" in err and "note: calibrated with onnxruntime int8" in err, err
    code, _, err = run(
        capsys,
        "predict",
        str(setup / "held"),
        "--artifacts",
        art,
        "--out",
        tmp_path / "p",
        "--precision",
        "int8",
        "--quiet",
    )
    assert code == 0 and "onnxruntime int8" in err and "note:" not in err, err


def test_int8_quality_gate_on_labelled_images_decides_instead_of_agreement(setup, tmp_path, capsys):
    art = fresh(setup, tmp_path)
    code, _, err = run(
        capsys, "calibrate", "--artifacts", art, "--good", setup / "cal", "--gate-data", setup / "s", "--quiet"
    )
    assert_one_line_error(code, err, "--gate-data goes with --int8")
    # an agreement limit this INT8 graph does not reach: with --gate-data the AUROC gate decides,
    # and passes at a wide limit
    code, out, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        art,
        "--int8",
        "--images",
        setup / "cal",
        "--int8-max-images",
        8,
        "--min-agreement",
        1.0,
        "--gate-data",
        setup / "s",
        "--max-auroc-drop",
        100,
        "--quiet",
    )
    assert code == 0, err
    gate = load_artifacts(art).manifest.parity.gates["int8"]
    assert gate.passed and gate.max_drop_points == 100 and gate.agreement.against == "fp32 onnx"
    assert "gate onnxruntime int8" in out
    # at a zero limit the outcome follows the figures: written exactly when neither AUROC dropped
    again = fresh(setup, tmp_path / "again")
    code, out, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        again,
        "--int8",
        "--images",
        setup / "cal",
        "--int8-max-images",
        8,
        "--gate-data",
        setup / "s",
        "--max-auroc-drop",
        0,
        "--quiet",
    )
    if code == 0:
        g = load_artifacts(again).manifest.parity.gates["int8"]
        assert g.passed and max(g.pixel_drop_points, g.image_drop_points) <= 0
    else:
        assert_one_line_error(code, err, "fails its quality gate")
        assert not (again / "model.int8.onnx").exists()


def test_int8_engine_needs_the_int8_graph_and_tensorrt(setup, tmp_path, capsys):
    art = fresh(setup, tmp_path)
    args = ("export", "--category", "fabric", "--precision", "int8", "--out", art)
    assert_one_line_error(*run(capsys, *args)[::2], "add --engine")
    assert_one_line_error(*run(capsys, *args, "--engine")[::2], "no model.int8.onnx")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert (
            run(
                capsys,
                "calibrate",
                "--artifacts",
                art,
                "--int8",
                "--images",
                setup / "cal",
                "--int8-max-images",
                8,
                "--min-agreement",
                0,
                "--quiet",
            )[0]
            == 0
        )
        assert_one_line_error(*run(capsys, *args, "--engine")[::2], "needs TensorRT")
        assert not (art / "model.plan").exists()


def test_re_export_says_that_calibration_must_be_redone(setup, tmp_path, capsys):
    art = fresh(setup, tmp_path)
    assert run(capsys, "calibrate", "--artifacts", art, "--good", setup / "cal", "--quiet")[0] == 0
    code, _, err = run(capsys, "export", "--category", "fabric", "--precision", "fp32", "--out", art, *TINY)
    assert code == 0 and "had calibration constants" in err and "run `clipad calibrate" in err, err
    assert load_artifacts(art).manifest.calibration is None


def test_empty_masks_fall_back_to_the_good_pixels(setup, tmp_path, capsys):
    art = fresh(setup, tmp_path)
    bad, masks = tmp_path / "bad", tmp_path / "masks"
    bad.mkdir()
    masks.mkdir()
    for f in sorted((setup / "s" / "fabric" / "test" / "scratch").iterdir())[:3]:
        shutil.copy(f, bad / f.name)
        Image.new("L", (160, 128), 0).save(masks / f"{f.stem}_mask.png")
    code, _, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        art,
        "--good",
        setup / "cal",
        "--anomalous",
        bad,
        "--masks",
        masks,
        "--quiet",
    )
    assert code == 0 and "masks mark no defect pixel" in err, err
    c = load_artifacts(art).manifest.calibration
    assert c.pixel_method.startswith("false-positive rate") and "f1" in c.achieved
