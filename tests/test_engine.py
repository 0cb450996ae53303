"""TensorRT engine build, on a machine that has TensorRT and an NVIDIA GPU.

TensorRT cannot be installed on the project's build machines, in CI, or on the GPU machine we
are lent (its wheels come from NVIDIA's own index), so these tests skip there with that reason.
"""

from __future__ import annotations

import json

import pytest

try:
    import tensorrt  # noqa: F401
    import torch

    HAVE = torch.cuda.is_available()
    WHY = "torch sees no CUDA GPU"
except ImportError:
    HAVE, WHY = False, "tensorrt does not import (not installable here: its wheels come from NVIDIA's index)"

pytestmark = pytest.mark.skipif(not HAVE, reason=WHY)


def test_engine_build_sidecar_and_fp16_layers(tmp_path, capsys):
    from clipad.core.hashing import file_sha256
    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.tensorrt_build import check_plan_compat, gpu_identity
    from tests.test_cli import run

    code, _, err = run(capsys, "export", "--category", "washer", "--model", "clipad-tiny", "--random-weights", "--quiet",
                       "--engine", "--max-batch", "4", "--out", tmp_path / "a", "--triton-repo", tmp_path / "repo")
    assert code == 0, err
    art = load_artifacts(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "model.plan.json").read_text())
    assert meta["profile"] == {"min": 1, "opt": 1, "max": 4}
    assert meta["onnx_sha256"] == file_sha256(tmp_path / "a" / meta["onnx"])
    assert meta["layers"].get("fp16", 0) > 0 and 0 < meta["fp16_layer_fraction"] <= 1
    assert art.manifest.files["model.plan"] == file_sha256(tmp_path / "a" / "model.plan")
    check_plan_compat(meta, tensorrt.__version__, gpu_identity())
    assert (tmp_path / "repo" / "washer_trt" / "1" / "model.plan").is_file()


def test_engine_parity_through_the_tensorrt_backend(tmp_path, capsys):
    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.parity import parity_images
    from clipad.runtime.parity import run_parity
    from tests.test_cli import run

    code, _, err = run(capsys, "export", "--category", "washer", "--model", "clipad-tiny", "--random-weights", "--quiet",
                       "--engine", "--out", tmp_path / "a")
    assert code == 0, err
    art = load_artifacts(tmp_path / "a")
    rows = run_parity(art, ["tensorrt"], parity_images(art.image_size, 3), "cuda")
    assert rows[0].backend.startswith("tensorrt") and rows[0].n_images == 3
    assert rows[0].figures.rel_l2 < 5e-2 and rows[0].figures.prob_max_abs < 5e-3
