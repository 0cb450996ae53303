"""Values refused before any work, and inputs that used to give a silently wrong result.

Every option value is checked when the command's request is built (bounds, finiteness), the
manifest when it is read (bounded, finite, consistent with its graph), prompt files by their
keys and placeholders, heads files by their tensors, and calibration masks by the one mask
reader eval uses. Each case runs the real CLI (in this process) on the tiny model's export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipad.deploy.artifacts import load_artifacts
from clipad.deploy.manifest import MANIFEST
from tests.helpers import TINY, assert_one_line_error, run


@pytest.fixture
def own_art(art, tmp_path) -> Path:
    """A copy of the shared tiny export (FP32, max batch 4) to change freely."""
    return Path(shutil.copytree(art.root, tmp_path / "art"))


def edit_manifest(root: Path, **changes) -> None:
    data = json.loads((root / MANIFEST).read_text())
    for key, value in changes.items():
        data[key] = value(data[key]) if callable(value) else value
    (root / MANIFEST).write_text(json.dumps(data))


def parts(folder: Path, n: int, size=(120, 100), seed: int = 0) -> list[Path]:
    """``n`` distinct random RGB images of ``size`` (w, h) in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        out.append(folder / f"{i:03d}.png")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(out[-1])
    return out


def masks_beside(images: list[Path], size=(120, 100)) -> None:
    """A ``<name>_mask.png`` beside each image (the folder layout of the docs), a square marked."""
    for img in images:
        m = np.zeros((size[1], size[0]), np.uint8)
        m[20:50, 30:70] = 255
        Image.fromarray(m).save(img.with_name(img.stem + "_mask.png"))


# --- calibrate: masks ----------------------------------------------------------------------


def test_calibrate_masks_beside_their_images(capsys, own_art, tmp_path):
    parts(tmp_path / "good", 8)
    bad = parts(tmp_path / "bad", 4, seed=1)
    masks_beside(bad)
    code, out, err = run(capsys, "calibrate", "--artifacts", own_art, "--good", tmp_path / "good",
                         "--anomalous", tmp_path / "bad", "--masks", tmp_path / "bad", "--quiet")  # fmt: skip
    assert code == 0, err
    assert "8 good + 4 anomalous" in out, out
    cal = load_artifacts(own_art).manifest.calibration
    assert cal is not None and cal.set.anomalous == 4
    assert cal.achieved["pixel_fpr"] < 1.0, cal.achieved


def test_calibrate_refuses_a_mask_of_another_size(capsys, own_art, tmp_path):
    parts(tmp_path / "good", 8)
    bad = parts(tmp_path / "bad", 2, seed=1)
    masks_beside(bad, size=(60, 50))  # half the image's size
    code, _, err = run(capsys, "calibrate", "--artifacts", own_art, "--good", tmp_path / "good",
                       "--anomalous", tmp_path / "bad", "--masks", tmp_path / "bad", "--quiet")  # fmt: skip
    assert_one_line_error(code, err, "000_mask.png is 60x50 but its image is 120x100")
    assert load_artifacts(own_art).manifest.calibration is None


# --- the manifest: bounded, finite, consistent with its graph ------------------------------


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"image_size": 10**6}, "image_size: must be <= "),
        ({"image_size": 64}, "image_size: 64, but onnx.inputs describes a 96 px input"),
        (
            {"image_size": 64, "onnx": lambda o: {**o, "inputs": [{**o["inputs"][0], "shape": ["batch", 64, 64, 3]}]}},
            "image_size: 64, but the graph model.onnx takes 96",
        ),
        ({"max_batch": 10**9}, "max_batch: must be <= "),
        ({"sigma": float("nan")}, "sigma: must be a finite number"),
        ({"sigma": 1e9}, "sigma: must be <= "),
        ({"mean": [0.5, float("inf"), 0.5]}, "mean[1]: must be a finite number"),
        ({"std": [0.5, float("nan"), 0.5]}, "std[1]: must be a finite number"),
        ({"precisions": ["fp32", "fp16"]}, "files: no model.fp16.onnx although precisions lists fp16"),
        ({"onnx": lambda o: {**o, "outputs": o["outputs"][:1]}}, "onnx.outputs: not those of model.onnx"),
        (
            {"onnx": lambda o: {**o, "inputs": [{**o["inputs"][0], "name": "pixels"}]}},
            "onnx.inputs: not those of model.onnx",
        ),
    ],
)
def test_manifest_values_are_bounded_and_match_the_graph(capsys, own_art, tmp_path, changes, fragment):
    edit_manifest(own_art, **changes)
    parts(tmp_path / "good", 2)
    code, _, err = run(capsys, "predict", tmp_path / "good", "--artifacts", own_art, "--backend", "onnxruntime",
                       "--device", "cpu", "--out", tmp_path / "pred", "--quiet")  # fmt: skip
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "pred").exists()


def test_manifest_graph_not_in_precisions(own_art):
    """A graph listed in ``files`` whose precision is not in ``precisions`` (a tampered list) is refused."""
    data = json.loads((own_art / MANIFEST).read_text())
    data["files"]["model.fp16.onnx"] = data["files"]["model.onnx"]
    (own_art / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(Exception, match="precisions: no fp16 although files lists model.fp16.onnx"):
        load_artifacts(own_art)


# --- prompt files and heads files ----------------------------------------------------------


def test_prompt_file_with_an_unknown_key(capsys, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("normal: ['good {}']\nabnormal: ['bad {}']\ntemplate: ['a {} here.']\n")
    code, _, err = run(capsys, "export", "--category", "x", "--prompts", path, "--out", tmp_path / "a", *TINY)
    assert_one_line_error(code, err, "unknown key 'template'", "normal, abnormal, templates")
    assert not (tmp_path / "a").exists()


def test_prompt_entry_with_a_named_placeholder(capsys, tmp_path, monkeypatch):
    path = tmp_path / "p.yaml"
    path.write_text("normal: ['good {}']\nabnormal: ['bad {} on {x}']\n")
    from clipad.methods.base import Method

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded before the prompt file was checked")

    monkeypatch.setattr(Method, "load", no_model)
    code, _, err = run(capsys, "export", "--category", "x", "--prompts", path, "--out", tmp_path / "a", *TINY)
    assert_one_line_error(code, err, str(path), "'bad {} on {x}'")


def test_heads_file_with_list_values(capsys, tmp_path, synth_root):
    heads = tmp_path / "heads.pth"
    torch.save({"linear_layers": {f"fc.{j}.{k}": [0.0, 1.0] for j in range(4) for k in ("weight", "bias")}}, heads)
    code, _, err = run(capsys, "eval", "--dataset", "mvtec", "--root", synth_root, "--method", "sdp+",
                       "--heads", heads, "--out", tmp_path / "r.json", *TINY)  # fmt: skip
    assert_one_line_error(code, err, f"heads file {heads}", "fc.0.weight")


# --- option values: one parser per kind ----------------------------------------------------


@pytest.mark.parametrize("sigma", ["-3", "nan", "inf", "1e9", "1000"])
def test_eval_sigma_is_validated(capsys, tmp_path, synth_root, sigma):
    code, _, err = run(capsys, "eval", "--dataset", "mvtec", "--root", synth_root, "--sigma", sigma,
                       "--out", tmp_path / "r.json", *TINY)  # fmt: skip
    assert_one_line_error(code, err, "--sigma")
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("sigma", ["1e9", "1000"])
def test_export_sigma_is_bounded(capsys, tmp_path, sigma):
    code, _, err = run(capsys, "export", "--category", "x", "--sigma", sigma, "--out", tmp_path / "a", *TINY)
    assert_one_line_error(code, err, "--sigma must be a finite number in [0, 64]")
    assert not (tmp_path / "a").exists()


def test_eval_records_its_sigma(capsys, tmp_path, synth_root):
    out = tmp_path / "r.json"
    code, _, err = run(capsys, "eval", "--dataset", "mvtec", "--root", synth_root, "--categories", "fabric",
                       "--sigma", "3", "--out", out, *TINY)  # fmt: skip
    assert code == 0, err
    assert json.loads(out.read_text())["fabric"]["sigma"] == 3.0
    code, _, err = run(capsys, "eval", "--dataset", "mvtec", "--root", synth_root, "--categories", "fabric",
                       "--out", out, *TINY)  # fmt: skip
    assert code == 0, err
    assert json.loads(out.read_text())["fabric"]["sigma"] == 8.0  # the method's default, as used


@pytest.mark.parametrize("lr", ["nan", "inf", "-1", "0"])
def test_train_learning_rate_is_refused_at_parse(capsys, tmp_path, synth_root, lr):
    out = tmp_path / "heads.safetensors"
    code, _, err = run(capsys, "train", "--dataset", "mvtec", "--root", synth_root, "--out", out, "--lr", lr, *TINY)
    assert_one_line_error(code, err, "--lr")
    assert list(tmp_path.iterdir()) == []  # no feature cache was built


@pytest.mark.parametrize("fpr", ["1e-320", "nan", "0.9"])
def test_calibrate_target_fpr_is_bounded(capsys, own_art, tmp_path, fpr):
    parts(tmp_path / "good", 4)
    code, _, err = run(capsys, "calibrate", "--artifacts", own_art, "--good", tmp_path / "good",
                       "--target-fpr", fpr, "--quiet")  # fmt: skip
    assert_one_line_error(code, err, "--target-fpr", "[1e-06, 0.5]")


@pytest.mark.parametrize("command", ["export", "calibrate"])
def test_max_auroc_drop_nan_is_refused_at_parse(capsys, own_art, tmp_path, command, monkeypatch):
    from clipad.methods.base import Method

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded before --max-auroc-drop was checked")

    monkeypatch.setattr(Method, "load", no_model)
    args = (
        ["export", "--category", "x", "--out", tmp_path / "a", *TINY]
        if command == "export"
        else ["calibrate", "--artifacts", own_art, "--good", own_art, "--int8", "--quiet"]
    )
    code, _, err = run(capsys, *args, "--max-auroc-drop", "nan")
    assert_one_line_error(code, err, "--max-auroc-drop")


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [
        ("--batch", "100000", "--batch must be an integer in [1, 1024]"),
        ("--batch", "1,16", "--batch 16 is above the artifacts' max batch 4"),
        ("--iterations", "1000000000", "--iterations"),
        ("--warmup", "1000000000", "--warmup"),
        ("--backends", ",", "--backends"),
    ],
)
def test_bench_values(capsys, own_art, option, value, fragment):
    code, _, err = run(capsys, "bench", "--artifacts", own_art, "--backends", "onnxruntime", "--precision",
                       "fp32", "--device", "cpu", "--no-parity", "--quiet", option, value)  # fmt: skip
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize("backends", [",", " , ,"])
def test_parity_refuses_an_empty_backend_list(capsys, own_art, backends):
    code, out, err = run(capsys, "parity", "--artifacts", own_art, "--backends", backends)
    assert_one_line_error(code, err, "--backends")
    assert out == ""
