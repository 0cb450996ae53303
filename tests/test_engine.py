"""TensorRT engine build and serving, on a machine that has TensorRT, cuda-python and an NVIDIA GPU.

TensorRT cannot be installed on the project's build machines, in CI, or on the GPU machine we
are lent (its wheels come from NVIDIA's index), so these tests skip there with the reason;
scripts/tensorrt_check.py runs them where TensorRT is. What can be checked without TensorRT is
in tests/test_tensorrt_build.py.
"""

from __future__ import annotations

import json

import pytest


def _why_not() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt does not import (not installable here: its wheels come from NVIDIA's index)"
    try:
        from cuda.bindings import runtime  # noqa: F401  (cuda-python >= 12.6.1)
    except ImportError:
        return "cuda-python (cuda.bindings.runtime, cuda-python >= 12.6.1) does not import: pip install 'clipad[gpu]'"
    import torch

    return None if torch.cuda.is_available() else "torch sees no CUDA GPU"


WHY = _why_not()
pytestmark = pytest.mark.skipif(WHY is not None, reason=WHY or "")
TINY = ["--model", "clipad-tiny", "--random-weights", "--quiet"]


@pytest.fixture(scope="module")
def fp16_engine(tmp_path_factory):
    """The tiny model exported with an FP16 engine (max batch 4, default opt batch) and a Triton repository."""
    from clipad import cli

    root = tmp_path_factory.mktemp("engine")
    code = cli.run(["export", "--category", "washer", *TINY, "--engine", "--max-batch", "4",
                    "--out", str(root / "a"), "--triton-repo", str(root / "repo")])
    assert code == 0
    return root


def test_fp16_engine_sidecar_profile_and_layers(fp16_engine):
    import tensorrt

    from clipad.core.hashing import file_sha256
    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.tensorrt.plan import check_plan, gpu_identity

    art = load_artifacts(fp16_engine / "a")
    meta = json.loads((fp16_engine / "a" / "model.plan.json").read_text())
    assert meta["profile"] == {"min": 1, "opt": 4, "max": 4}  # opt: min(8, max batch)
    assert meta["strongly_typed"] is True and meta["onnx"] == ("model.fp16.onnx" if "fp16" in art.manifest.precisions else "model.onnx")
    assert meta["onnx_sha256"] == file_sha256(fp16_engine / "a" / meta["onnx"])
    if meta["precision"] == "fp16":
        assert meta["layers"].get("fp16", 0) > 0 and 0 < meta["fp16_layer_fraction"] <= 1
        assert meta["layers"].get("fp32", 0) > 0  # the FP32 islands of model.fp16.onnx stay FP32
    assert art.manifest.files["model.plan"] == file_sha256(fp16_engine / "a" / "model.plan")
    check_plan(art.plan_meta(), art.manifest, tensorrt.__version__, gpu_identity())
    assert (fp16_engine / "repo" / "washer_trt" / "1" / "model.plan").is_file()


def test_fp32_export_builds_an_fp32_engine(tmp_path, capsys):
    from clipad.deploy.artifacts import load_artifacts
    from tests.test_cli import run

    code, _, err = run(capsys, "export", "--category", "washer", *TINY, "--precision", "fp32", "--engine", "--out", tmp_path / "a")
    assert code == 0, err
    meta = load_artifacts(tmp_path / "a").plan_meta()
    assert meta.precision == "fp32" and meta.onnx == "model.onnx" and meta.layers.get("fp16", 0) == 0


def test_int8_engine_from_the_calibrated_graph(tmp_path, capsys, synth_root):
    import tensorrt

    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.tensorrt.plan import check_plan, gpu_identity
    from tests.test_cli import run

    a = tmp_path / "a"
    assert run(capsys, "export", "--category", "washer", *TINY, "--max-batch", "4", "--out", a)[0] == 0
    code, _, err = run(capsys, "calibrate", "--artifacts", a, "--int8", "--images", synth_root / "washer" / "test" / "good",
                       "--min-agreement", "0.0", "--quiet")
    assert code == 0, err
    code, out, err = run(capsys, "export", "--category", "washer", "--engine", "--precision", "int8", "--opt-batch", "2", "--out", a)
    assert code == 0, err
    art = load_artifacts(a)
    meta = art.plan_meta()
    assert meta.precision == "int8" and meta.onnx == "model.int8.onnx" and meta.layers.get("int8", 0) > 0
    assert meta.profile.model_dump() == {"min": 1, "opt": 2, "max": 4} and "tuned for 2" in out
    check_plan(meta, art.manifest, tensorrt.__version__, gpu_identity())


def test_engine_parity_through_the_tensorrt_backend(fp16_engine):
    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.parity import parity_images
    from clipad.runtime.parity import run_parity

    art = load_artifacts(fp16_engine / "a")
    rows = run_parity(art, ["tensorrt"], parity_images(art.image_size, 3), "cuda")
    assert rows[0].backend.startswith("tensorrt") and rows[0].n_images == 3
    assert rows[0].figures.rel_l2 < 5e-2 and rows[0].figures.prob_max_abs < 5e-3
