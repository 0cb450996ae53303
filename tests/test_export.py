"""`clipad export` and `clipad parity` on the tiny model: graph parity, manifest, atomicity,
FP16 precision placement, the TensorRT-parser check, Triton configs, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from clipad import cli
from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.core.progress import Tasks
from clipad.deploy.artifacts import load_artifacts, staging_dir
from clipad.deploy.export import ExportConfig, export
from clipad.deploy.parity import compare, parity_images
from clipad.deploy.rebuild import reference_model
from clipad.deploy.tensorrt.parser_check import unsupported_ops
from clipad.deploy.tensorrt.plan import check_plan_compat
from clipad.deploy.triton_repo import config_text, validate_config
from clipad.model.heads import save_heads
from clipad.model.prompts import PROMPT_SETS
from clipad.model.rvs import text_vectors
from clipad.runtime.backends import open_backend
from tests.helpers import assert_one_line_error, few_prompts, random_heads, run

TINY = ["--model", "clipad-tiny", "--random-weights", "--quiet"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny):
    """sdp and sdp+ artifacts of the tiny model (module scope: each export takes a few seconds)."""
    root = tmp_path_factory.mktemp("exports")
    visual = tiny.clip.visual
    save_heads(root / "heads.safetensors", random_heads(visual.conv1.out_channels, visual.proj.shape[1], seed=4))
    out = {}
    for mode in ("sdp", "sdp+"):
        cfg = ExportConfig(
            category="washer",
            out=root / mode,
            method=mode,
            heads_path=root / "heads.safetensors" if mode == "sdp+" else None,
            prompts=PROMPT_SETS["industrial"],
            max_batch=4,
            triton_repo=root / f"triton-{mode}",
        )
        out[mode] = export(tiny, cfg, Tasks(None))
    return out


@pytest.mark.parametrize("mode", ["sdp", "sdp+"])
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_graph_matches_reference(exported, tiny, uint8_images, mode, batch):
    art = exported[mode]
    reference = reference_model(art)
    x = uint8_images(batch, tiny.image_size, seed=10 + batch)
    with torch.no_grad():
        ref_map, ref_prob = (t.numpy() for t in reference(torch.from_numpy(x.numpy())))
    amap, prob = open_backend(art, "onnxruntime", "fp32", "cpu")(x.numpy())
    assert amap.shape == (batch, tiny.image_size, tiny.image_size) and prob.shape == (batch,)
    assert np.linalg.norm(amap - ref_map) / np.linalg.norm(ref_map) < 1e-4
    assert np.abs(prob - ref_prob).max() < 1e-5


def test_reference_rebuild_is_the_exported_model(exported, tiny):
    """The manifest holds everything needed to rebuild the reference (weights, text, heads, sigma)."""
    art = exported["sdp+"]
    m = art.manifest
    assert m.mode == "sdp+" and m.weights.model_dump() == {"source": "random", "seed": 1}
    tv = text_vectors(tiny.clip, tiny.tokenizer, "washer", "dbscan", "mvtec")
    np.testing.assert_allclose(art.text_features(), tv.matrix.T, rtol=1e-6, atol=1e-7)


def ort_run(path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    amap, prob = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})
    return amap, prob


def test_manifest_contract_and_hashes(exported, tiny):
    art = exported["sdp"]
    m = art.manifest
    on_disk = json.loads((art.root / "manifest.json").read_text())
    for key in (
        "format_version",
        "category",
        "object_name",
        "model",
        "weights",
        "mode",
        "rvs",
        "prompts",
        "image_size",
        "sigma",
        "onnx",
        "parity",
        "calibration",
        "files",
        "versions",
        "max_batch",
    ):
        assert key in on_disk, key
    assert m.calibration is None and m.object_name == "washer" and m.model == "clipad-tiny"
    assert m.rvs.dbscan.model_dump() == {"eps": 0.5, "min_samples": 15}
    assert m.prompts.n_normal == 198 and len(m.prompts.sha256) == 64
    assert m.onnx.model_dump()["inputs"] == [{"name": "image", "dtype": "uint8", "shape": ["batch", 96, 96, 3]}]
    assert [o.name for o in m.onnx.outputs] == ["anomaly_map", "image_prob"]
    assert set(m.versions) >= {"torch", "open_clip", "onnx", "onnxruntime"}
    # The FP16 branch the export had to take follows from its recorded figures and limits, computed
    # here independently of the export's own verdict; both branches are forced in the tests below.
    f16, tol = m.parity.figures("fp16"), m.parity.tolerances["fp16"]
    within = (
        f16.rel_l2 <= tol.rel_l2
        and f16.batch1_rel_l2 <= tol.rel_l2
        and f16.prob_max_abs <= tol.prob_max_abs
        and f16.top1pct_agreement >= tol.top1pct_agreement
    )
    assert ("fp16" in m.precisions) == within
    expected = {"text_features.npy", "model.onnx"} | ({"model.fp16.onnx"} if within else set())
    if m.mode == "sdp+":
        expected.add("heads.safetensors")
    assert set(m.files) == expected
    if within:  # kept: the recorded figures are the graph's, against the FP32 graph
        x = parity_images(m.image_size, 3)
        ref = ort_run(art.root / "model.onnx", x)
        got = ort_run(art.root / "model.fp16.onnx", x)
        assert f16.against == "fp32 onnx"
        np.testing.assert_allclose(compare(ref, got, "fp32 onnx").rel_l2, f16.rel_l2, rtol=1e-3)
    else:  # dropped for parity: recorded and warned about
        assert f16.dropped and f16.violations and any("fp16" in w for w in m.warnings)
    for name, digest in m.files.items():
        assert file_sha256(art.root / name) == digest
    tf = np.load(art.root / "text_features.npy")
    assert tf.shape == (2, tiny.clip.visual.proj.shape[1]) and tf.dtype == np.float32
    np.testing.assert_allclose(
        np.linalg.norm(tf, axis=1), 1, rtol=1e-3
    )  # dbscan vectors are unit in fp16 (method.md 3.3)
    assert m.parity.figures("fp32").rel_l2 <= m.parity.tolerances["fp32"].rel_l2
    assert oct(os.stat(art.root / "manifest.json").st_mode)[-3:] != "600"


def test_tampered_file_is_refused(tmp_path, exported):
    import shutil

    copy = tmp_path / "a"
    shutil.copytree(exported["sdp"].root, copy)
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ClipadError, match="does not match the sha256"):
        open_backend(load_artifacts(copy), "onnxruntime", "fp32", "cpu")


@pytest.fixture(scope="module")
def fp16_graph(exported, tmp_path_factory):
    from clipad.deploy.fp16 import convert_fp16

    path = tmp_path_factory.mktemp("fp16") / "model.fp16.onnx"
    convert_fp16(exported["sdp+"].root / "model.onnx", path)
    return path


def test_fp16_graph_keeps_sensitive_ops_in_fp32(fp16_graph):
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16_graph)))
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    ln = [n for n in g.node if n.op_type == "LayerNormalization"]
    sm = [n for n in g.node if n.op_type == "Softmax"]
    assert ln and sm and all(types[n.input[0]] == f32 for n in ln + sm)
    vit_mm = [
        n for n in g.node if n.op_type == "MatMul" and n.name.startswith("/vit/") and types.get(n.output[0]) == f16
    ]
    assert len(vit_mm) > 0  # the matrix work really is FP16
    post = [n for n in g.node if not n.name.startswith("/vit/") and n.op_type in ("MatMul", "Einsum", "Sigmoid")]
    assert post and all(types.get(n.output[0]) == f32 for n in post)  # logits x100, heads, upsampling, blur
    assert [i.type.tensor_type.elem_type for i in g.input] == [onnx.TensorProto.UINT8]
    assert all(o.type.tensor_type.elem_type == f32 for o in g.output)


def test_fp32_islands_pass_no_value_through_fp16(fp16_graph):
    """Between two FP32 nodes a value stays FP32: the converter's Cast(FP16) -> Cast(FP32) round
    trips are gone, the softmax's logits and the graph's outputs among them (a double cast to
    FP16 first, as from ln_pre into the FP16 residual stream, is FP16 by design)."""
    g = onnx.load(str(fp16_graph)).graph
    to = {n.name: next(a.i for a in n.attribute if a.name == "to") for n in g.node if n.op_type == "Cast"}
    producer = {o: n for n in g.node for o in n.output}
    trips = [
        n.name
        for n in g.node
        if to.get(n.name) == onnx.TensorProto.FLOAT
        and (half := producer.get(n.input[0])) is not None
        and to.get(half.name) == onnx.TensorProto.FLOAT16
        and not (
            producer.get(half.input[0]) is not None and to.get(producer[half.input[0]].name) == onnx.TensorProto.FLOAT16
        )
    ]
    assert trips == []


def test_fp16_parity_failure_drops_the_graph_or_fails(tiny, tmp_path, monkeypatch, capsys):
    from clipad.deploy import parity

    monkeypatch.setitem(parity.TOLERANCES, "fp16", {"rel_l2": 0.0, "prob_max_abs": 0.0, "top1pct_agreement": 1.1})
    code, out, err = run(capsys, "export", "--category", "washer", "--out", tmp_path / "a", *TINY)
    assert code == 0 and "WARNING: parity failed for the fp16 graph" in err
    m = load_artifacts(tmp_path / "a").manifest
    assert m.precisions == ["fp32"] and not (tmp_path / "a" / "model.fp16.onnx").exists()
    code, _, err = run(capsys, "export", "--category", "washer", "--precision", "fp16", "--out", tmp_path / "b", *TINY)
    assert_one_line_error(code, err, "parity failed for the fp16 graph")
    assert not (tmp_path / "b").exists()


def test_fp16_export_keeps_the_fp32_graph(tiny, tmp_path, monkeypatch):
    """--precision fp16 keeps model.onnx, the FP16 graph's source: INT8 calibration, the
    calibration constants' identity and FP32 serving need it. It differs from `all` only in
    strictness (tested above); the tolerance is opened here so that the FP16 graph passes."""
    from clipad.calibration.constants import MODEL_FILES
    from clipad.deploy import parity

    monkeypatch.setitem(parity.TOLERANCES, "fp16", {"rel_l2": 1.0, "prob_max_abs": 1.0, "top1pct_agreement": 0.0})
    art = export(
        tiny,
        ExportConfig(category="washer", out=tmp_path / "a", prompts=PROMPT_SETS["industrial"], precision="fp16"),
        Tasks(None),
    )
    m = load_artifacts(art.root).manifest
    assert m.precisions == ["fp32", "fp16"]
    assert set(m.files) == {"text_features.npy", "model.onnx", "model.fp16.onnx"}
    assert all(m.files[n] == file_sha256(art.root / n) for n in MODEL_FILES)  # what calibration records
    x = np.random.default_rng(0).integers(0, 256, (2, tiny.image_size, tiny.image_size, 3), dtype=np.uint8)
    amap32, _ = open_backend(art, "onnxruntime", "fp32", "cpu")(x)
    amap16, _ = open_backend(art, "onnxruntime", "fp16", "cpu")(x)
    assert amap32.shape == amap16.shape == (2, tiny.image_size, tiny.image_size)


def test_exported_graphs_pass_the_tensorrt_parser_check(exported, fp16_graph):
    for art in exported.values():
        assert unsupported_ops(art.root / "model.onnx") == []
    assert unsupported_ops(fp16_graph) == []


def test_tensorrt_parser_check_finds_problems(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [4, 1])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 1])
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["y"], name="t"),
            helper.make_node("Cast", ["y"], ["c"], to=TensorProto.FLOAT, name="c"),
            helper.make_node("Hardmax2", ["c"], ["z"], name="h", domain=""),
        ],
        "g",
        [x],
        [y, z],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    problems = unsupported_ops(path)
    assert any("Transpose" in p and "uint8" in p for p in problems)
    assert any("Hardmax2" in p and "not in TensorRT" in p for p in problems)


def test_plan_compatibility_check():
    meta = {"tensorrt": "10.13.0", "gpu": "NVIDIA L4", "compute_capability": "8.9"}
    check_plan_compat(meta, "10.13.0", {"gpu": "NVIDIA L4", "compute_capability": "8.9"})
    with pytest.raises(
        ClipadError, match=r"built with TensorRT 10.13.0 on NVIDIA L4 .* this machine has TensorRT 11.4.0.*rebuild"
    ):
        check_plan_compat(meta, "11.4.0", {"gpu": "NVIDIA L4", "compute_capability": "8.9"})
    with pytest.raises(ClipadError, match="H200"):
        check_plan_compat(meta, "10.13.0", {"gpu": "NVIDIA H200", "compute_capability": "9.0"})


def test_triton_repository_and_config_validation(exported):
    repo = exported["sdp"].root.parent / "triton-sdp"
    text = (repo / "washer_onnx" / "config.pbtxt").read_text()
    io, mb = exported["sdp"].manifest.onnx, exported["sdp"].manifest.max_batch
    cfg = validate_config(text, io, mb)
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 4 and cfg.HasField("dynamic_batching")
    assert file_sha256(repo / "washer_onnx" / "1" / "model.onnx") == exported["sdp"].manifest.files["model.onnx"]
    assert cfg.default_model_filename == "model.onnx"  # the config names the file it serves
    assert not (repo / "washer_trt").exists()  # no plan, no tensorrt model
    wrong = config_text("washer_onnx", "onnxruntime_onnx", mb, io).replace("dims: [ 96, 96, 3 ]", "dims: [ 96, 96 ]")
    with pytest.raises(ClipadError, match="dims"):
        validate_config(wrong, io, mb)
    with pytest.raises(ClipadError, match="does not parse"):
        validate_config("name: [", io, mb)


def test_staging_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with staging_dir(out) as stage:
            (stage / "model.onnx").write_text("half")
            raise RuntimeError("killed")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_export_killed_midway_leaves_no_artifact_dir(tmp_path):
    out = tmp_path / "art"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipad", "export", "--category", "washer", "--out", str(out), *TINY],
        cwd=Path(__file__).parents[1],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any((p / "model.onnx").exists() for p in tmp_path.glob("art.partial-*")):
        time.sleep(0.05)
    assert proc.poll() is None, "export finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    # the next export cleans up the dead process's staging directory
    code = cli.run(["export", "--category", "washer", "--out", str(out), "--precision", "fp32", *TINY])
    assert code == 0 and (out / "manifest.json").is_file()
    assert not list(tmp_path.glob("art.partial-*"))


def test_parity_command(exported, capsys, tmp_path):
    code, out, err = run(
        capsys,
        "parity",
        "--artifacts",
        exported["sdp+"].root,
        "--backends",
        "onnxruntime",
        "--json",
        tmp_path / "p.json",
    )
    assert code == 0, err
    assert "onnxruntime fp32" in out
    rows = json.loads((tmp_path / "p.json").read_text())
    assert all(r["within_tolerance"] for r in rows) and rows[0]["rel_l2"] < 1e-4


def test_export_bad_input(tmp_path, capsys):
    base = ["export", "--out", tmp_path / "a", *TINY]
    code, _, err = run(capsys, *base, "--category", "bad/name")
    assert_one_line_error(code, err, "--category 'bad/name'")
    code, _, err = run(capsys, *base, "--category", "bottle", "--object-name", " ")
    assert_one_line_error(code, err, "--object-name is empty")
    code, _, err = run(capsys, *base, "--category", "bottle", "--object-name", "very " * 80)
    assert_one_line_error(code, err, "longer than the text encoder's 77 tokens")
    code, _, err = run(
        capsys, *base, "--category", "bottle", "--method", "sdp+", "--heads", tmp_path / "none.safetensors"
    )
    assert_one_line_error(code, err, "heads file not found")
    code, _, err = run(capsys, *base, "--category", "bottle", "--max-batch", 0)
    assert_one_line_error(code, err, "--max-batch must be an integer in [1, 1024]")
    code, _, err = run(capsys, *base, "--category", "bottle", "--sigma", -1)
    assert_one_line_error(code, err, "--sigma must be a finite number in [0, 64]")
    (tmp_path / "file.txt").write_text("x")
    code, _, err = run(capsys, "export", "--category", "bottle", "--out", tmp_path / "file.txt" / "art", *TINY)
    assert_one_line_error(code, err, f"{tmp_path / 'file.txt'} is a file, not a folder")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = run(capsys, "export", "--category", "bottle", "--out", tmp_path / "mine", *TINY)
    assert_one_line_error(code, err, "was not written by clipad")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert not (tmp_path / "a").exists()


def test_engine_requires_tensorrt(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        code, _, err = run(capsys, "export", "--category", "bottle", "--engine", "--out", tmp_path / "a", *TINY)
        assert_one_line_error(code, err, "--engine needs TensorRT")
    else:
        pytest.skip("tensorrt is installed here; tests/test_engine.py covers the build")


@pytest.mark.slow
def test_full_size_export_parity(tmp_path, capsys):
    """ViT-B-16-plus-240 with random weights: export with parity; the FP16 graph is kept only
    within its tolerance (with random weights the maps span ~1e-3, so FP16 often is not)."""
    prompts = ["--prompts", few_prompts(tmp_path), "--rvs", "mean"]
    code, out, err = run(
        capsys, "export", "--category", "bottle", "--random-weights", "--quiet", "--out", tmp_path / "a", *prompts
    )
    assert code == 0, err
    m = load_artifacts(tmp_path / "a").manifest
    assert m.image_size == 240 and m.precisions[0] == "fp32"
    p32, p16 = m.parity.figures("fp32"), m.parity.figures("fp16")
    assert p32.rel_l2 <= 1e-4 and p32.prob_max_abs <= 1e-5 and p32.top1pct_agreement >= 0.99
    assert p16.rel_l2 < 0.1 and p16.prob_max_abs <= 2e-3  # measured, and not wildly off
    assert ("fp16" in m.precisions) == (not p16.violations)
    assert ("fp16" in m.precisions) or any("fp16" in w for w in m.warnings)


def test_parity_tensorrt_without_plan(exported, capsys):
    code, _, err = run(capsys, "parity", "--artifacts", exported["sdp"].root, "--backends", "tensorrt")
    assert_one_line_error(code, err, "no model.plan", "clipad export --engine")


def test_duplicate_casts_from_older_converters_are_repaired():
    """onnxruntime 1.30's float16 converter emits one identical Cast per consumer under a single
    output name; the repair keeps one, and refuses two different producers of a name."""
    from onnx import TensorProto, helper

    from clipad.deploy.fp16 import drop_duplicate_nodes, toposort

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    cast = lambda: helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT, name="c")  # noqa: E731
    graph = helper.make_graph([cast(), cast(), helper.make_node("Add", ["x32", "x32"], ["y"], name="a")], "g", [x], [y])
    assert drop_duplicate_nodes(graph) == 1
    toposort(graph)
    onnx.checker.check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    other = helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.DOUBLE, name="d")
    graph.node.insert(1, other)
    with pytest.raises(ValueError, match="two different nodes produce 'x32'"):
        drop_duplicate_nodes(graph)
