"""Whatever stops a command reads as one line: third-party failures and warnings, unwritable outputs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import TINY, assert_one_line_error, run

MAX_ERROR_CHARS = 400  # a bound well above clipad's own lines and far below sklearn's advice paragraphs


def nan_weights(path: Path, tiny) -> Path:
    """The tiny model's state dict with every floating value NaN, as an offline --weights file."""
    from safetensors.torch import save_file

    state = {k: v.detach().clone().contiguous() for k, v in tiny.clip.state_dict().items()}
    for v in state.values():
        if v.is_floating_point():
            v.fill_(float("nan"))
    save_file(state, str(path))
    return path


def assert_short_line(code: int, err: str) -> str:
    assert_one_line_error(code, err)
    line = err.strip().splitlines()[-1]
    assert len(line) <= MAX_ERROR_CHARS, line
    return line


def test_dbscan_on_nan_weights_is_one_line(tmp_path, capsys, tiny, synth_root):
    """DBSCAN's ValueError carries a paragraph of advice about other estimators on its second line."""
    args = ["export", "--category", "fabric", "--precision", "fp32", "--out", tmp_path / "art"]
    weights = nan_weights(tmp_path / "w.safetensors", tiny)
    code, _, err = run(capsys, *args, "--model", "clipad-tiny", "--weights", weights)
    line = assert_short_line(code, err)
    assert "HistGradientBoosting" not in err and "NaN" in line
    assert not (tmp_path / "art").exists()


def test_onnxruntime_shape_error_is_one_line(tmp_path, capsys, art, synth_root):
    """A manifest whose image size is not the graph's: ONNX Runtime's message spans four lines."""
    bad = tmp_path / "art"
    shutil.copytree(art.root, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["image_size"] = manifest["image_size"] - 32
    (bad / "manifest.json").write_text(json.dumps(manifest))
    images = synth_root / "washer" / "test" / "good"
    code, _, err = run(capsys, "predict", images, "--artifacts", bad, "--backend", "onnxruntime", "--device", "cpu",
                       "--out", tmp_path / "p", "--quiet")  # fmt: skip
    assert_short_line(code, err)


def test_real_onnxruntime_error_reduced(art):
    """The handler's reduction on ONNX Runtime's own exception object (whatever path raises it)."""
    import onnxruntime as ort

    from clipad.core.packages import describe_failure

    session = ort.InferenceSession(str(art.root / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    with pytest.raises(Exception) as caught:
        session.run(None, {name: np.zeros((1, 7, 7, 3), np.uint8)})
    assert len(str(caught.value).strip().splitlines()) > 1  # the case under test: a multi-line message
    line = describe_failure(caught.value)
    assert "\n" not in line and line.startswith("error: ") and len(line) <= MAX_ERROR_CHARS
    assert "invalid dimensions" in line.lower()


@pytest.mark.parametrize(
    "err, words",
    [
        (KeyError("x"), "unexpected KeyError"),
        (MemoryError(), "out of memory"),
        (PermissionError(13, "Permission denied", "/somewhere/r.json"), "/somewhere/r.json"),
        (ValueError("first\n\n  second line\nthird"), "first"),
        (RuntimeError("see http://user:secret@host/x"), "***@host"),
    ],
)
def test_any_exception_reads_as_one_sentence(err, words):
    from clipad.core.packages import describe_failure

    line = describe_failure(err)
    assert "\n" not in line and words in line and "secret" not in line, line
    assert not line.startswith(f"error: {type(err).__name__}:"), line


def test_usage_errors_are_one_line(capsys):
    code, _, err = run(capsys, "eval", "--batch-size", "x")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--batch-size" in lines[0], err


def clipad(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "clipad", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_third_party_warnings_only_with_debug(tmp_path, art):
    """PIL warns on palette images with byte transparency; clipad shows such warnings with --debug only."""
    (tmp_path / "in").mkdir()
    im = Image.new("P", (40, 40))
    im.putpalette([i % 256 for i in range(768)])
    im.save(tmp_path / "in" / "a.png", transparency=bytes([0] * 10 + [255] * 246))
    args = ["predict", tmp_path / "in", "--artifacts", art.root, "--backend", "onnxruntime", "--device", "cpu"]
    quiet = clipad(*args, "--out", tmp_path / "p1", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert "Warning" not in quiet.stderr and "warnings.warn" not in quiet.stderr, quiet.stderr
    debug = clipad("--debug", *args, "--out", tmp_path / "p2", "--quiet", cwd=tmp_path)
    assert debug.returncode == 0 and "UserWarning" in debug.stderr, debug.stderr


@pytest.mark.parametrize("where", ["/proc/x/r.json", "a_folder", "a_file/r.json"])
def test_eval_refuses_unwritable_out_before_work(tmp_path, capsys, synth_root, where, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("x")
    code, out, err = run(capsys, "eval", "--dataset", "mvtec", "--root", synth_root, "--out", where, *TINY)
    assert_one_line_error(code, err, where.split("/")[0] if where[0] != "/" else "/proc/x")
    assert "evaluating" not in out + err  # refused before the model loaded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder"]


def test_train_bench_parity_refuse_unwritable_outputs(tmp_path, capsys, synth_root, art):
    (tmp_path / "a_folder").mkdir()
    train = ("train", "--dataset", "mvtec", "--root", synth_root)
    bench = ("bench", "--artifacts", art.root, "--backends", "onnxruntime", "--precision", "fp32")
    cases = [  # (the command line, the bad path)
        ((*train, "--epochs", 1, *TINY), ("--out", tmp_path / "a_folder")),
        ((*train, *TINY), ("--out", "/proc/x/h.safetensors")),
        (bench, ("--json", "/proc/x.json")),
        (bench, ("--plot", tmp_path)),
        (("parity", "--artifacts", art.root), ("--json", tmp_path / "a_folder")),
    ]
    for args, (flag, path) in cases:
        code, out, err = run(capsys, *args, flag, path)
        assert_one_line_error(code, err, flag, str(path))
        assert "epoch" not in out and "|" not in out, out  # no training log, no table: refused before the work
    assert [p.name for p in tmp_path.iterdir()] == ["a_folder"] and not any((tmp_path / "a_folder").iterdir())
