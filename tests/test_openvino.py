"""The OpenVINO tier on the tiny model: `clipad export --openvino` (IR, FP32 islands, NNCF INT8,
manifest), the backend (parity, explicit precision honoured, hash check, modes, devices) and
``--precision auto``'s choice."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install 'clipad[openvino]')")
pytest.importorskip("nncf", reason="NNCF is not installed (pip install 'clipad[openvino]')")

import openvino as ov  # noqa: E402
import openvino.properties.hint as hints  # noqa: E402

from clipad.core.errors import ClipadError  # noqa: E402
from clipad.core.hashing import file_sha256  # noqa: E402
from clipad.core.progress import Tasks  # noqa: E402
from clipad.deploy.artifacts import load_artifacts  # noqa: E402
from clipad.deploy.export import ExportConfig, export  # noqa: E402
from clipad.deploy.manifest import OV_BIN, OV_INT8_XML, OV_XML, Manifest, QualityGate  # noqa: E402
from clipad.deploy.openvino_ir import fp32_layer, ov_device  # noqa: E402
from clipad.deploy.parity import compare, parity_images  # noqa: E402
from clipad.model.prompts import PROMPT_SETS  # noqa: E402
from clipad.runtime.backends import OpenVinoOptions, open_backend, select_backend  # noqa: E402
from clipad.runtime.backends.openvino_backend import choose_precision  # noqa: E402
from clipad.runtime.parity import reference_outputs  # noqa: E402
from tests.helpers import assert_one_line_error, run  # noqa: E402

CPU_CAPS = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("ov") / "washer"
    cfg = ExportConfig(
        category="washer",
        out=root,
        prompts=PROMPT_SETS["industrial"],
        max_batch=4,
        precision="fp32",
        openvino=True,
        sigma=2.0,
    )
    return export(tiny, cfg, Tasks(None))


def test_export_writes_ir_and_manifest(art):
    m = Manifest.read(art.root / "manifest.json")
    ov_entry = m.openvino
    assert ov_entry is not None and ov_entry.ir["fp32"] == OV_XML
    for name in (OV_XML, OV_BIN):
        assert m.files[name] == file_sha256(art.root / name)
    assert ov_entry.source_sha256 == m.files["model.onnx"]
    assert ov_entry.parity["fp32"].violations == [] and ov_entry.parity["fp32"].rel_l2 < 1e-4
    assert ("bf16" in ov_entry.parity) == ("BF16" in CPU_CAPS)
    assert "int8" in ov_entry.parity
    assert ov_entry.fp32_layers > 0


def test_islands_are_marked_in_the_ir(art):
    """Every LayerNorm, softmax, attention and post-ViT layer carries the "precise" attribute; the
    ViT's matrix products do not."""
    root = ET.parse(art.root / OV_XML).getroot()
    precise = {}
    for layer in root.iter("layer"):
        rt = layer.find("rt_info")
        precise[(layer.get("type"), layer.get("name"))] = rt is not None and any(a.get("name") == "precise" for a in rt)
    assert any(t == "MVN" for t, _ in precise) and all(v for (t, _), v in precise.items() if t == "MVN")
    assert all(v for (t, _), v in precise.items() if t in ("Softmax", "ScaledDotProductAttention"))
    vit_matmuls = [v for (t, n), v in precise.items() if t == "MatMul" and n.startswith("/vit/mlp")]
    assert vit_matmuls and not any(vit_matmuls)
    assert fp32_layer("MatMul", "/maps/MatMul") and not fp32_layer("Const", "/maps/x")


def test_backend_fp32_parity(art):
    images = parity_images(art.geometry, 3)
    ref = reference_outputs(art, images)
    for mode in ("latency", "throughput"):
        with open_backend(art, "openvino", "fp32", "cpu", OpenVinoOptions(mode)) as be:
            f = compare((ref.anomaly_map, ref.image_prob), be(images), "reference", "fp32")
        assert f.within, f


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_explicit_precision_is_honoured(art, precision):
    if precision.upper() not in CPU_CAPS:
        pytest.skip(f"this CPU has no {precision} in OpenVINO's capabilities {CPU_CAPS}")
    if precision not in art.manifest.openvino.ir:
        pytest.skip(
            f"the {precision} IR missed its agreement limit at export and was not kept (recorded in the manifest)"
        )
    with open_backend(art, "openvino", precision, "cpu") as be:
        got = be.runner.compiled.get_property(hints.inference_precision)
        assert got == (ov.Type.bf16 if precision == "bf16" else ov.Type.f32)  # int8: f32 for the unquantised rest
        assert be.info().precision == precision


def test_fp16_without_device_support_is_one_line(art):
    if "FP16" in CPU_CAPS:
        pytest.skip("this CPU runs FP16 in OpenVINO")
    with pytest.raises(ClipadError, match="no fp16 support"):
        open_backend(art, "openvino", "fp16", "cpu")


def test_hash_mismatch_is_refused(art, tmp_path):
    copy = tmp_path / "a"
    shutil.copytree(art.root, copy)
    with open(copy / OV_BIN, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ClipadError, match="does not match the sha256"):
        open_backend(load_artifacts(copy), "openvino", "fp32", "cpu")


def test_devices():
    assert ov_device("auto") == "CPU" and ov_device("cpu") == "CPU" and ov_device("GPU.1") == "GPU.1"
    for bad in ("cuda", "GPU.x", "npu"):
        with pytest.raises(ClipadError, match="unknown OpenVINO device"):
            ov_device(bad)


def test_bad_device_on_the_cli_is_one_line(art, capsys, tmp_path):
    code, _, err = run(
        capsys, "predict", str(tmp_path), "--artifacts", art.root, "--backend", "openvino", "--device", "cuda"
    )
    assert_one_line_error(code, err, "unknown OpenVINO device 'cuda'")


def _gate(passed: bool) -> QualityGate:
    agreement = {"max_abs": 0.1, "rel_l2": 0.01, "prob_max_abs": 0.01, "top1pct_agreement": 0.97, "against": "fp32"}
    return QualityGate.create(
        n_images=10,
        n_anomalous=5,
        pixel_auroc_fp32=0.9,
        pixel_auroc=0.9,
        image_auroc_fp32=0.8,
        image_auroc=0.8,
        pixel_drop_points=0.0,
        image_drop_points=0.0,
        max_drop_points=0.5,
        agreement=agreement,
        passed=passed,
    )


def test_auto_precision_choice(art):
    entry = art.manifest.openvino
    assert choose_precision(entry, CPU_CAPS) == "fp32"  # no gates recorded: fp32
    gated = entry.replace(
        ir={"fp32": OV_XML, "bf16": OV_XML, "int8": OV_INT8_XML}, gates={"bf16": _gate(True), "int8": _gate(True)}
    )
    assert choose_precision(gated, ["FP32", "BF16", "INT8"]) == "int8"  # both passed: the faster one
    assert (
        choose_precision(gated.replace(gates={"bf16": _gate(True), "int8": _gate(False)}), ["FP32", "BF16", "INT8"])
        == "bf16"
    )
    assert (
        choose_precision(gated.replace(gates={"bf16": _gate(True)}), ["FP32", "INT8"]) == "fp32"
    )  # no BF16 on the device
    failed = entry.replace(gates={"bf16": _gate(False), "int8": _gate(False)})
    assert choose_precision(failed, ["FP32", "BF16", "INT8"]) == "fp32"
    no_int8_ir = gated.replace(ir={"fp32": OV_XML})
    assert choose_precision(no_int8_ir, ["FP32", "INT8"]) == "fp32"
    with select_backend(art, "openvino", "cpu", "auto") as be:
        assert be.precision == "fp32"


def test_auto_backend_never_picks_openvino(art):
    with select_backend(art, "auto", "cpu", "auto") as be:
        assert be.name != "openvino"


def test_int8_ir_quantises_only_the_vit_matrix_products(art):
    """NNCF's FakeQuantize nodes feed only the ViT's matrix products, never an FP32 island; the
    INT8 IR runs and gives finite maps close enough not to be broken (its accuracy is the gate's job)."""
    assert art.manifest.openvino.ir["int8"] == OV_INT8_XML
    model = ov.Core().read_model(str(art.root / OV_INT8_XML))
    fq = [op for op in model.get_ops() if op.get_type_name() == "FakeQuantize"]
    assert fq
    consumers = {
        (t.get_node().get_type_name(), t.get_node().get_friendly_name())
        for op in fq
        for out in op.outputs()
        for t in out.get_target_inputs()
    }
    assert consumers and not any(fp32_layer(t, n) for t, n in consumers)
    assert {t for t, _ in consumers} <= {"MatMul", "Convolution", "FakeQuantize", "Convert", "Transpose", "Reshape"}
    images = parity_images(art.geometry, 3)
    ref = reference_outputs(art, images)
    with open_backend(art, "openvino", "int8", "cpu") as be:
        amap, prob = be(images)
    assert amap.shape == ref.anomaly_map.shape and np.isfinite(amap).all() and np.isfinite(prob).all()
    assert compare((ref.anomaly_map, ref.image_prob), (amap, prob), "reference").rel_l2 < 1.0


@pytest.fixture(scope="module")
def gated(tmp_path_factory, tiny, synth_root):
    """sdp+ (random heads) exported with the quality gate on the synthetic set's washer images."""
    from clipad.model.heads import save_heads
    from tests.helpers import random_heads

    root = tmp_path_factory.mktemp("ovgate")
    visual = tiny.clip.visual
    save_heads(root / "heads.safetensors", random_heads(visual.conv1.out_channels, visual.proj.shape[1], seed=3))
    cfg = ExportConfig(
        category="washer",
        out=root / "washer",
        method="sdp+",
        heads_path=root / "heads.safetensors",
        prompts=PROMPT_SETS["industrial"],
        max_batch=4,
        precision="fp32",
        openvino=True,
        gate_root=synth_root,
        sigma=2.0,
    )
    return export(tiny, cfg, Tasks(None))


def test_gate_is_computed_and_recorded(gated, synth_root):
    from clipad.deploy.quality_gate import gate_images
    from clipad.evaluation.metrics import binary_metrics

    entry = Manifest.read(gated.root / "manifest.json").openvino
    assert set(entry.gates) == set(entry.ir) - {"fp32"}
    gate = gate_images(synth_root, "washer", gated.geometry)
    images, labels, masks = gate.images, gate.labels, gate.masks
    for _precision, g in entry.gates.items():
        assert g.n_images == len(images) and g.n_anomalous == int(labels.sum())
        assert g.passed == (max(g.pixel_drop_points, g.image_drop_points) <= g.max_drop_points)
        assert g.pixel_drop_points == pytest.approx(100 * (g.pixel_auroc_fp32 - g.pixel_auroc))
    # the recorded FP32 pixel AUROC is the FP32 IR's on those images
    with open_backend(gated, "openvino", "fp32", "cpu") as be:
        amap, _ = be(images)
    assert binary_metrics(masks, amap)["auroc"] == pytest.approx(
        next(iter(entry.gates.values())).pixel_auroc_fp32, abs=1e-6
    )


def test_gate_needs_a_reduced_precision_and_the_category(tiny, tmp_path, synth_root):
    from clipad.deploy.export import validate

    with pytest.raises(ClipadError, match="export an FP16 graph .* or add --openvino"):
        validate(ExportConfig(category="washer", out=tmp_path / "a", gate_root=synth_root, precision="fp32"))
    with pytest.raises(ClipadError, match="no folder for category"):
        validate(ExportConfig(category="bolt", out=tmp_path / "a", gate_root=synth_root, openvino=True))


def test_serving_is_torch_free(art):
    import subprocess
    import sys

    code = (
        "import sys; from clipad.deploy.artifacts import load_artifacts; "
        "from clipad.runtime.backends import open_backend; "
        f"be = open_backend(load_artifacts({str(art.root)!r}), 'openvino', 'fp32', 'cpu'); "
        "assert 'torch' not in sys.modules and 'nncf' not in sys.modules, "
        "sorted(m for m in sys.modules if 'torch' in m)[:5]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predict_cli_with_openvino_throughput(art, capsys, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, im in enumerate(parity_images(art.geometry, 3)):
        Image.fromarray(im).save(folder / f"{i}.png")
    code, out, err = run(
        capsys,
        "predict",
        folder,
        "--artifacts",
        art.root,
        "--backend",
        "openvino",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--openvino-mode",
        "throughput",
        "--out",
        tmp_path / "pred",
        "--quiet",
    )
    assert code == 0, err
    assert "openvino fp32 (OpenVINO CPU, throughput)" in err
    assert len((tmp_path / "pred" / "predictions.jsonl").read_text().splitlines()) == 3
    code, _, err = run(
        capsys, "predict", folder, "--artifacts", art.root, "--backend", "openvino", "--openvino-mode", "fast"
    )
    assert_one_line_error(code, err, "--openvino-mode must be one of latency, throughput")


@pytest.fixture()
def copied(gated, tmp_path):
    """A private copy of the gated export (the calibrate tests rewrite its INT8 IR)."""
    dst = tmp_path / "washer"
    shutil.copytree(gated.root, dst)
    return load_artifacts(dst)


def test_calibrate_remakes_the_int8_ir_from_part_images(copied, synth_root, capsys):
    """`calibrate --int8 --int8-backend openvino` quantises the IR again from the user's images:
    new IR files, their hashes, its parity against the FP32 IR and its quality gate in the
    manifest; the backend serves it."""
    before = Manifest.read(copied.root / "manifest.json")
    good = synth_root / "washer" / "train" / "good"
    code, out, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        copied.root,
        "--int8",
        "--int8-backend",
        "openvino",
        "--images",
        good,
        "--gate-data",
        synth_root,
        "--max-auroc-drop",
        "100",
        "--quiet",
    )
    assert code == 0, err
    assert "model.int8.xml written" in out and "gate openvino int8" in out
    m = Manifest.read(copied.root / "manifest.json")
    n_cal = len(list(good.iterdir()))
    assert (
        m.openvino.parity["int8"].calibration_images == n_cal and m.openvino.parity["int8"].against == "openvino fp32"
    )
    assert m.openvino.parity["int8"].n_images == 3 + min(8, n_cal)
    for name in (OV_INT8_XML, "model.int8.bin"):
        assert m.files[name] == file_sha256(copied.root / name)
    assert m.files["model.int8.bin"] != before.files["model.int8.bin"]  # calibrated on other images: other scales
    gate = m.openvino.gates["int8"]
    assert gate.passed and gate.max_drop_points == 100 and gate.agreement.against == "openvino fp32"
    # the synthetic set is small, and the line says how coarse its image AUROC is
    step = 100 / (gate.n_anomalous * (gate.n_images - gate.n_anomalous))
    assert f"only {gate.n_images} held-out images: one reordered pair moves the image AUROC by {step:.2g} points" in out
    assert m.openvino.gates["bf16"] == before.openvino.gates["bf16"] if "bf16" in before.openvino.gates else True
    assert m.parity == before.parity and m.int8 is None  # the ONNX Runtime side is untouched
    images = parity_images(copied.geometry, 2)
    with open_backend(load_artifacts(copied.root), "openvino", "int8", "cpu") as be:
        amap, prob = be(images)
    assert np.isfinite(amap).all() and np.isfinite(prob).all()


def test_calibrate_int8_ir_not_kept_writes_nothing(copied, synth_root, capsys):
    """An INT8 IR below --min-agreement (1.0: INT8 never reproduces FP32's top 1% of pixels
    exactly on these random weights, 0.93 at the export) is refused and nothing changes."""
    before = {p.name: p.read_bytes() for p in copied.root.iterdir() if p.is_file()}
    code, _, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        copied.root,
        "--int8",
        "--int8-backend",
        "openvino",
        "--images",
        synth_root / "washer" / "train" / "good",
        "--min-agreement",
        "1.0",
    )
    assert_one_line_error(code, err, "the OpenVINO INT8 IR's top-1% pixel agreement with FP32 is", "not written")
    assert {p.name: p.read_bytes() for p in copied.root.iterdir() if p.is_file()} == before


def test_calibrate_int8_backend_errors(art, tmp_path, capsys, tiny, synth_root):
    images = synth_root / "washer" / "test" / "good"
    code, _, err = run(
        capsys, "calibrate", "--artifacts", art.root, "--int8", "--int8-backend", "tensorrt", "--images", images
    )
    assert_one_line_error(code, err, "--int8-backend must be one of onnxruntime, openvino")
    code, _, err = run(capsys, "calibrate", "--artifacts", art.root, "--int8-backend", "openvino", "--good", images)
    assert_one_line_error(code, err, "--int8-backend goes with --int8")
    code, _, err = run(
        capsys, "calibrate", "--artifacts", art.root, "--int8", "--images", images, "--max-auroc-drop", "-1"
    )
    assert_one_line_error(code, err, "--max-auroc-drop must be a finite number in [0, 100]")
    code, _, err = run(
        capsys, "calibrate", "--artifacts", art.root, "--int8", "--images", images, "--min-agreement", "1.5"
    )
    assert_one_line_error(code, err, "--min-agreement must be a finite number in [0, 1]")
    plain = export(
        tiny,
        ExportConfig(
            category="washer", out=tmp_path / "plain", prompts=PROMPT_SETS["industrial"], max_batch=2, precision="fp32"
        ),
        Tasks(None),
    )
    code, _, err = run(
        capsys, "calibrate", "--artifacts", plain.root, "--int8", "--int8-backend", "openvino", "--images", images
    )
    assert_one_line_error(code, err, "has no OpenVINO IR to quantise")
