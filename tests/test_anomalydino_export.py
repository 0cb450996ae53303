"""`clipad export --method anomalydino` (method.md section 15, docs/anomalydino-export.md): the
graph and manifest it writes, the graph against the PyTorch model and against the reference
rebuilt from the artifacts, the manifest's rules, serving (predict, calibrate, run) on it, and
the one-line errors of wrong option combinations.

DINOv2 ViT-S/14 with seeded random weights at 56 px keeps each export to seconds: the synthetic
160 x 128 images keep their aspect ratio (method.md 15.1), so the input is 56 x 70 (a 4 x 5
patch grid). The oracle against the official code is tests/test_anomalydino.py's.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from clipad import cli
from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.core.progress import Tasks
from clipad.data.geometry import Geometry
from clipad.deploy.artifacts import load_artifacts
from clipad.deploy.export import ExportConfig, export
from clipad.deploy.manifest import DINO_MEMORY, MANIFEST, ONNX_FP16, ONNX_FP32, TEXT_FEATURES, Manifest
from clipad.deploy.parity import TOLERANCES, compare, parity_images
from clipad.deploy.rebuild import reference_model
from clipad.deploy.reference_set import ReferenceConfig, read_images, select_images
from clipad.methods.anomalydino import METHOD, DinoOptions
from clipad.model.dinov2 import IMAGENET_MEAN, IMAGENET_STD, load_state, random_state
from clipad.runtime.backends import open_backend
from tests.helpers import TINY, assert_one_line_error, run

SIZE = 56
HW = (56, 70)  # 128 x 160 images with the smaller edge at 56 px
GRID = (HW[0] // 14) * (HW[1] // 14)
DINO = ["--method", "anomalydino", "--resolution", str(SIZE), "--random-weights", "--quiet"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, synth_root):
    """fabric's one good training image as the memory (every patch, masking auto: off), FP32 and FP16."""
    out = tmp_path_factory.mktemp("dino") / "fabric"
    good = synth_root / "fabric" / "train" / "good"
    args = ["export", "--category", "fabric", "--reference", str(good), "--out", str(out), *DINO]
    assert cli.run(args) == 0
    return load_artifacts(out)


def test_export_writes_the_graph_and_its_manifest(exported):
    m = Manifest.read(exported.root / MANIFEST)
    d = m.anomalydino
    assert m.mode == "anomalydino" and m.model == "dinov2_vits14" and m.weights.source == "random"
    assert m.rvs is None and m.prompts is None and m.reference is None and m.heads_sha256 is None
    assert (m.image_size, m.sigma, tuple(m.mean), tuple(m.std)) == (list(HW), 4.0, IMAGENET_MEAN, IMAGENET_STD)
    assert m.geometry == Geometry(*HW, SIZE) and exported.geometry.covered(128, 160) == (128, 160)
    assert d is not None and (d.backbone, d.resolution, d.rotations, d.masking, d.masking_option) == (
        "dinov2_vits14",
        SIZE,
        False,
        False,
        "auto",
    )
    grid = GRID
    assert (d.shots, d.memory_patches, d.patches, d.source_patches, d.width) == (1, None, grid, grid, 384)
    assert d.coreset_radius == 0 and d.memory_bytes == grid * 384 * 4 and d.images[0].name == "000.png"
    assert m.precisions == ["fp32", "fp16"]
    assert set(m.files) == {ONNX_FP32, ONNX_FP16, DINO_MEMORY} and not (exported.root / TEXT_FEATURES).exists()
    assert "rvs" not in json.loads((exported.root / MANIFEST).read_text())
    for p in m.precisions:  # parity judged at export, within the house limits
        assert m.parity.graphs[p].violations == [] and m.parity.graphs[p].rel_l2 <= TOLERANCES[p]["rel_l2"]
    graph = onnx.load(str(exported.root / ONNX_FP32)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", *HW, 3] and [o.name for o in graph.output] == ["anomaly_map", "image_prob"]


def test_graph_equals_the_pytorch_model_and_the_rebuilt_reference(exported, synth_root):
    """The FP32 graph against the model built here from the same weights and good image (rel L2
    within the house FP32 limit), and the reference rebuilt from the artifacts equal to that model."""
    good = select_images(str(synth_root / "fabric" / "train" / "good"), None)
    refs = read_images(good, DinoOptions(resolution=SIZE).geometry)
    assert refs.images.shape[1:3] == HW
    model = METHOD.build_model("dinov2_vits14", random_state("dinov2_vits14", 0), refs.images, False, False)[0]
    x = parity_images(exported.geometry, 3)
    with torch.no_grad():
        want = tuple(t.numpy() for t in model(torch.from_numpy(x)))
        rebuilt = tuple(t.numpy() for t in reference_model(exported)(torch.from_numpy(x)))
    got = open_backend(exported, "onnxruntime", "fp32", "cpu")(x)
    f = compare(want, got, "pytorch", limits="fp32")
    assert f.violations == [] and f.rel_l2 <= 1e-4 and f.prob_max_abs <= 1e-4
    np.testing.assert_array_equal(rebuilt[0], want[0])
    np.testing.assert_array_equal(rebuilt[1], want[1])
    torch_backend = open_backend(exported, "torch", "fp32", "cpu")(x)
    np.testing.assert_array_equal(torch_backend[1], want[1])


def test_manifest_round_trips_and_keeps_its_rules(exported, tmp_path):
    text = (exported.root / MANIFEST).read_text()
    assert Manifest.read(exported.root / MANIFEST).to_json() == text
    data = json.loads(text)

    def refused(change, fragment):
        broken = json.loads(json.dumps(data))
        change(broken)
        (tmp_path / MANIFEST).write_text(json.dumps(broken))
        with pytest.raises(ClipadError, match=fragment) as e:
            Manifest.read(tmp_path / MANIFEST)
        assert "\n" not in str(e.value)

    refused(lambda d: d.pop("anomalydino"), "anomalydino: mode anomalydino needs its record")
    refused(lambda d: d["files"].pop(DINO_MEMORY), "anomalydino: present exactly when files lists")
    refused(lambda d: d.update(model="dinov2_vitb14"), r"model: dinov2_vitb14 at \[56, 70\] px, but anomalydino")
    refused(lambda d: d["anomalydino"].update(patches=10_000), f"patches: 10000 kept of {GRID} source patches")
    refused(lambda d: d.update(mode="sdp"), r"image_size: mode sdp takes a square input, not \[56, 70\]")
    prompts = {"set": "x", "source": "x", "sha256": "0" * 64, "n_normal": 1, "n_abnormal": 1}
    refused(lambda d: d.update(prompts=prompts), "prompts: present exactly when rvs is")


def test_the_memory_bound_rotations_and_masking_are_recorded(tmp_path, synth_root):
    """The library path: --memory-patches as a k-center bound over the rotated views, masking on."""
    cfg = ExportConfig(
        category="washer",
        out=tmp_path / "a",
        method="anomalydino",
        reference=ReferenceConfig(str(synth_root / "washer" / "train" / "good"), memory_patches=20),
        precision="fp32",
        max_batch=2,
        dino=DinoOptions(resolution=SIZE, rotations=True, masking="on"),
    )
    art = export(load_state("dinov2_vits14", random_weights=True, seed=3), cfg, Tasks(None))
    d, m = art.manifest.anomalydino, art.manifest
    assert d is not None and (d.memory_patches, d.patches, d.source_patches) == (20, 20, 8 * GRID)
    assert d.rotations and d.masking and d.masking_option == "on" and d.coreset_radius > 0
    assert m.weights.source == "random" and m.weights.seed == 3 and m.parity.graphs["fp32"].violations == []
    x = parity_images(art.geometry, 2)
    with torch.no_grad():
        want = [t.numpy() for t in reference_model(art)(torch.from_numpy(x))]
    got = open_backend(art, "onnxruntime", "fp32", "cpu")(x)
    assert compare(tuple(want), got, "pytorch", limits="fp32").violations == []
    # TensorRT's parser check on the masked graph (ArgMax, GatherElements, 1-D MaxPool, a constant
    # identity) in FP32, FP16 and INT8 (`clipad calibrate --int8`'s quantiser, on 2 synthetic images)
    from clipad.calibration.int8 import quantise
    from clipad.deploy.fp16 import convert_fp16
    from clipad.deploy.tensorrt.parser_check import unsupported_ops

    convert_fp16(art.root / ONNX_FP32, tmp_path / "fp16.onnx")
    quantise(art.root / ONNX_FP32, tmp_path / "int8.onnx", parity_images(art.geometry, 2), Tasks(None))
    for path in (art.root / ONNX_FP32, tmp_path / "fp16.onnx", tmp_path / "int8.onnx"):
        assert unsupported_ops(path) == [], path.name
    int8 = onnx.load(str(tmp_path / "int8.onnx")).graph
    assert {"QuantizeLinear", "ArgMax", "GatherElements", "MaxPool"} <= {n.op_type for n in int8.node}
    assert "EyeLike" not in {n.op_type for n in int8.node}
    # the patch embedding's bias stays float: an INT32 DequantizeLinear is not TensorRT's
    conv = next(n for n in int8.node if n.op_type == "Conv")
    assert len(conv.input) == 3 and conv.input[2] in {t.name for t in int8.initializer}


def test_tensorrt_parser_check_takes_its_graphs(exported):
    """Masking off, no rotations: the export's FP32 and FP16 graphs pass TensorRT's parser check
    (INT8 and the masked graph: test_the_memory_bound_rotations_and_masking_are_recorded)."""
    from clipad.deploy.tensorrt.parser_check import unsupported_ops

    for name in (ONNX_FP32, ONNX_FP16):
        assert unsupported_ops(exported.root / name) == [], name


def test_engine_goes_as_far_as_sdp_without_tensorrt(synth_root, tmp_path, capsys):
    """`--engine` is accepted; without TensorRT it stops, as SDP's does, in one line before any work."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        good = synth_root / "fabric" / "train" / "good"
        args = ["export", "--category", "fabric", "--reference", good, "--out", tmp_path / "a", *DINO, "--engine"]
        code, _, err = run(capsys, *args)
        assert_one_line_error(code, err, "--engine needs TensorRT")
        assert not (tmp_path / "a").exists()
    else:
        pytest.skip("tensorrt is installed here; tests/test_engine.py covers the build")


def test_bench_takes_its_flops_from_the_method(exported, tmp_path, capsys):
    """`clipad bench` on an AnomalyDINO export: its rows, the FLOPs of methods/anomalydino.py for
    this export (ViT-S/14 at 56 px, the memory's patches, no mask), no dual path."""
    from clipad.model.dinov2 import ARCHS

    report = tmp_path / "bench.json"
    args = ["--backends", "onnxruntime", "--precision", "fp32", "--batch", "1", "--iterations", "2", "--warmup", "0"]
    code, out, err = run(capsys, "bench", "--artifacts", exported.root, *args, "--device", "cpu", "--json", report)
    assert code == 0, err
    res = json.loads(report.read_text())
    d = exported.manifest.anomalydino
    assert d is not None and res["mode"] == "anomalydino" and res["model"] == "dinov2_vits14"
    want = METHOD.flops(ARCHS["dinov2_vits14"].dims(*HW), d.patches)
    assert res["flops"]["per_image"] == want and want["memory"] == 2 * GRID * d.patches * 384
    assert res["flops"]["plain_encoding_per_image"] is None and res["dual_path"] == []
    (row,) = res["rows"]
    assert row["status"] == "ok" and row["parity"]["within_tolerance"] is True
    assert row["gflops_per_s"] == pytest.approx(want["total"] * row["images_per_s"] / 1e9)
    assert f"FLOPs per image (dinov2_vits14, anomalydino): {want['total'] / 1e9:.4g} GFLOP" in out


def test_weights_file_is_recorded_and_checked_when_rebuilt(tmp_path, synth_root):
    """--weights FILE: path and sha256 in the manifest; the reference is rebuilt from that file,
    and a file changed since export is refused in one line."""
    from safetensors.torch import save_file

    weights = tmp_path / "dinov2_vits14.safetensors"
    save_file(random_state("dinov2_vits14", 5), str(weights))
    cfg = ExportConfig(
        category="washer",
        out=tmp_path / "a",
        method="anomalydino",
        reference=ReferenceConfig(str(synth_root / "washer" / "train" / "good")),
        precision="fp32",
        dino=DinoOptions(resolution=SIZE),
    )
    art = export(load_state("dinov2_vits14", weights), cfg, Tasks(None))
    w = art.manifest.weights
    assert w.source == "file" and w.path == str(weights.resolve()) and w.sha256 == file_sha256(weights)
    x = parity_images(art.geometry, 2)
    with torch.no_grad():
        want = reference_model(art)(torch.from_numpy(x))[1].numpy()
    np.testing.assert_allclose(open_backend(art, "onnxruntime", "fp32", "cpu")(x)[1], want, atol=1e-5)
    save_file(random_state("dinov2_vits14", 6), str(weights))
    with pytest.raises(ClipadError, match="changed since export") as e:
        reference_model(art)
    assert "\n" not in str(e.value)


def test_calibrate_predict_and_run_serve_it(exported, synth_root, tmp_path, capsys):
    """Calibration and the runtime score with the method's own image score (ImageScore.PROB: the
    top-1% mean alone), ONNX Runtime and torch alike."""
    art = tmp_path / "a"
    shutil.copytree(exported.root, art)
    test = synth_root / "fabric" / "test"
    code, out, err = run(
        capsys, "calibrate", "--artifacts", art, "--good", test / "good", "--anomalous", f"{test}/[!g]*/*.png",
        "--backend", "onnxruntime", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    c = Manifest.read(art / MANIFEST).calibration
    assert c is not None and c.set.good == 3 and c.set.anomalous == 4
    code, _, err = run(capsys, "predict", test, "--artifacts", art, "--out", tmp_path / "p", "--backend", "onnxruntime",
                       "--save-maps", "--save-overlays")  # fmt: skip
    assert code == 0, err
    recs = [json.loads(line) for line in (tmp_path / "p" / "predictions.jsonl").read_text().splitlines()]
    first = recs[0]["files"]  # the non-square input's map, and the overlay on the whole 160 x 128 image it covers
    assert np.load(tmp_path / "p" / first["map"]).shape == HW
    assert np.asarray(Image.open(tmp_path / "p" / first["overlay"])).shape == (128, 160, 3)
    lo, hi = c.image_prob_range
    for r in recs:  # the fused score is image_prob's min-max alone: the map maximum plays no part
        assert r["fused"] == pytest.approx((r["image_prob"] - lo) / (hi - lo), abs=1e-6)
    assert {r["label"] for r in recs} == {"normal", "anomalous"}
    code, _, err = run(capsys, "run", "--source", test, "--artifacts", art, "--backend", "torch", "--events",
                       tmp_path / "e.jsonl")  # fmt: skip
    assert code == 0, err
    events = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert [e["label"] for e in events] == [r["label"] for r in recs]
    np.testing.assert_allclose([e["image_prob"] for e in events], [r["image_prob"] for r in recs], atol=1e-5)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([*DINO, "--heads", "h.safetensors"], "--method anomalydino uses no --heads"),
        ([*DINO, "--rvs", "mean"], "--method anomalydino uses no --rvs"),
        ([*DINO, "--sigma", "2"], "uses no --sigma (anomalydino blurs with the official sigma 4)"),
        ([*DINO, "--object-name", "cloth"], "uses no --object-name"),
        ([*DINO, "--model", "clipad-tiny"], "--model (anomalydino takes --backbone)"),
        ([*DINO, "--resolution", "100"], "--resolution must be a multiple of 14"),
        ([*DINO, "--masking", "yes"], "--masking must be one of auto, on, off"),
        ([*DINO, "--backbone", "vits14"], "--backbone must be one of dinov2_"),
        (DINO, "--method anomalydino needs --reference GOOD_IMAGES"),
        ([*TINY, "--resolution", "112"], "--resolution: only for --method anomalydino"),
        ([*TINY, "--backbone", "dinov2_vitb14", "--rotations"], "--backbone, --rotations: only for --method anomaly"),
    ],
)
def test_wrong_combinations_are_one_line(args, fragment, synth_root, tmp_path, capsys):
    ref = [] if args == DINO else ["--reference", synth_root / "fabric" / "train" / "good"]
    base = ["export", "--category", "fabric", "--out", tmp_path / "a", *ref]
    code, _, err = run(capsys, *base, *args)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "a").exists()


def test_commands_for_the_clip_methods_refuse_it_in_one_line(exported, synth_root, tmp_path, capsys):
    copy = tmp_path / "a"
    shutil.copytree(exported.root, copy)
    code, _, err = run(capsys, "reference", "add", synth_root / "fabric" / "test" / "good", "--artifacts", copy)
    assert_one_line_error(code, err, "is an AnomalyDINO export: export it again with all the good images")
    code, _, err = run(capsys, "predict", synth_root / "fabric" / "test", "--artifacts", copy, "--backend", "openvino")
    assert_one_line_error(code, err, "has no OpenVINO IR")


def test_openvino_irs_parity_gate_and_serving(synth_root, tmp_path, capsys):
    """`--openvino` with `--gate-data`: the FP32 IR within the FP32 limit of the PyTorch reference,
    every reduced precision's parity and AUROC gate recorded, and `predict --backend openvino`
    serving the FP32 IR with the ONNX graph's scores."""
    ov_module = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'clipad[openvino]')")
    out = tmp_path / "fabric"
    good = synth_root / "fabric" / "train" / "good"
    args = ["export", "--category", "fabric", "--reference", good, "--out", out, "--precision", "fp32", *DINO]
    code, _, err = run(capsys, *args, "--openvino", "--gate-data", synth_root)
    assert code == 0, err
    ov = load_artifacts(out).manifest.openvino
    assert ov is not None and ov.parity["fp32"].rel_l2 <= TOLERANCES["fp32"]["rel_l2"]
    caps = set(ov_module.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    reduced = {p for p, cap in (("bf16", "BF16"), ("fp16", "FP16")) if cap in caps}  # as the CPU offers them
    assert set(ov.parity) == {"fp32", "int8", *reduced}, caps
    assert ov.gates is not None and set(ov.gates) == {"int8", *reduced}
    records = {}
    for backend in ("onnxruntime", "openvino"):
        pred = tmp_path / backend
        cmd = ["predict", synth_root / "fabric" / "test", "--artifacts", out, "--backend", backend, "--precision"]
        code, _, err = run(capsys, *cmd, "fp32", "--out", pred, "--quiet")
        assert code == 0, err
        records[backend] = [
            json.loads(line)["image_prob"] for line in (pred / "predictions.jsonl").read_text().splitlines()
        ]
    np.testing.assert_allclose(records["openvino"], records["onnxruntime"], rtol=1e-4, atol=1e-5)
