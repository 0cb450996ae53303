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
    code = cli.run(
        [
            "export",
            "--category",
            "washer",
            *TINY,
            "--engine",
            "--max-batch",
            "4",
            "--out",
            str(root / "a"),
            "--triton-repo",
            str(root / "repo"),
        ]
    )
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
    assert meta["tf32"] is False  # BuilderFlag.TF32 cleared before the build
    assert meta["strongly_typed"] is True and meta["onnx"] == (
        "model.fp16.onnx" if "fp16" in art.manifest.precisions else "model.onnx"
    )
    assert meta["onnx_sha256"] == file_sha256(fp16_engine / "a" / meta["onnx"])
    if meta["precision"] == "fp16":
        assert meta["layers"].get("fp16", 0) > 0 and 0 < meta["fp16_layer_fraction"] <= 1
        assert meta["layers"].get("fp32", 0) > 0  # the FP32 islands of model.fp16.onnx stay FP32
    assert art.manifest.files["model.plan"] == file_sha256(fp16_engine / "a" / "model.plan")
    check_plan(art.plan_meta(), art.manifest, tensorrt.__version__, gpu_identity())
    assert (fp16_engine / "repo" / "washer_trt" / "1" / "model.plan").is_file()


def test_fp32_export_builds_an_fp32_engine(tmp_path, capsys):
    from clipad.deploy.artifacts import load_artifacts
    from tests.helpers import run

    code, _, err = run(
        capsys, "export", "--category", "washer", *TINY, "--precision", "fp32", "--engine", "--out", tmp_path / "a"
    )
    assert code == 0, err
    meta = load_artifacts(tmp_path / "a").plan_meta()
    assert meta.precision == "fp32" and meta.onnx == "model.onnx" and meta.layers.get("fp16", 0) == 0


def test_fp32_engine_meets_the_fp32_parity_limit(tmp_path, capsys):
    """TF32 off: the FP32 plan is held to the FP32 graph's limit against the reference."""
    from tests.helpers import run

    code, _, err = run(
        capsys, "export", "--category", "washer", *TINY, "--precision", "fp32", "--engine", "--out", tmp_path / "a"
    )
    assert code == 0, err
    code, out, err = run(
        capsys, "parity", "--artifacts", tmp_path / "a", "--backends", "tensorrt", "--json", tmp_path / "p.json"
    )
    assert code == 0, out + err


def test_inspector_shows_types_only_through_a_context(fp16_engine):
    """NvInferRuntime.h: without a context whose input shapes are set, dynamic dimensions are -1 and
    no format is shown; through one (as build_engine reads it) every layer has its types."""
    import tensorrt as trt

    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.tensorrt.inspector import count_layer_precisions, engine_layer_precisions

    art = load_artifacts(fp16_engine / "a")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
        (fp16_engine / "a" / "model.plan").read_bytes()
    )
    bare = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    spec = art.manifest.onnx.inputs[0]
    counts = engine_layer_precisions(trt, engine, {spec.name: (2, *spec.shape[1:])})
    assert counts.get("fp16", 0) + counts.get("fp32", 0) > 0
    try:  # what the header says of the bare inspector: record it either way in the log
        bare_counts = count_layer_precisions(bare)
    except Exception as err:  # noqa: BLE001
        bare_counts = str(err)
    print(f"inspector without a context: {bare_counts}; with one: {counts}")


def test_a_damaged_timing_cache_is_discarded_and_the_build_goes_on(tmp_path, capsys):
    import tensorrt

    from clipad.deploy.tensorrt import build
    from clipad.deploy.tensorrt.plan import gpu_identity, timing_cache_path
    from tests.helpers import run

    path = timing_cache_path(tensorrt.__version__, gpu_identity())
    saved = path.read_bytes() if path.is_file() else None
    try:
        for damaged in (
            b"not a timing cache",
            build.frame_timing_cache(b"\x00" * 4096),
        ):  # ours torn; TensorRT's refused
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(damaged)
            code, _, err = run(
                capsys,
                "export",
                "--category",
                "washer",
                *TINY,
                "--precision",
                "fp32",
                "--engine",
                "--out",
                tmp_path / f"a{len(damaged)}",
            )
            assert code == 0, err
            assert "timing cache" in err and "discarded" in err, err
            assert build.read_timing_cache(path) != b""  # a new, valid cache was saved
    finally:
        if saved is not None:
            path.write_bytes(saved)


def test_int8_engine_from_the_calibrated_graph(tmp_path, capsys, synth_root):
    import tensorrt

    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.tensorrt.plan import check_plan, gpu_identity
    from tests.helpers import run

    a = tmp_path / "a"
    assert run(capsys, "export", "--category", "washer", *TINY, "--max-batch", "4", "--out", a)[0] == 0
    code, _, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        a,
        "--int8",
        "--images",
        synth_root / "washer" / "test" / "good",
        "--min-agreement",
        "0.0",
        "--quiet",
    )
    assert code == 0, err
    code, out, err = run(
        capsys, "export", "--category", "washer", "--engine", "--precision", "int8", "--opt-batch", "2", "--out", a
    )
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
    rows = run_parity(art, ["tensorrt"], parity_images(art.geometry, 3), "cuda")
    assert rows[0].backend.startswith("tensorrt") and rows[0].n_images == 3
    assert rows[0].figures.rel_l2 < 5e-2 and rows[0].figures.prob_max_abs < 5e-3
