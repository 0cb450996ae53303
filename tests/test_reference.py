"""The normal-reference mode (method.md section 14) on the tiny model and the synthetic set:
memory and coreset, the reference map against a direct computation, the exported graph against
the torch module, both modes, the manifest record, bad input, calibration's refusal,
`clipad reference add` and `clipad eval --shots`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.core.progress import Tasks
from clipad.data.images import load_image
from clipad.deploy.artifacts import load_artifacts
from clipad.deploy.export import ExportConfig, export
from clipad.deploy.manifest import MANIFEST, ONNX_FP16, ONNX_FP32, REFERENCE_MEMORY, Manifest
from clipad.deploy.rebuild import reference_model
from clipad.deploy.reference_set import ReferenceConfig
from clipad.deploy.runners.onnxruntime import OnnxRuntimeRunner
from clipad.deploy.tensorrt.parser_check import unsupported_ops
from clipad.model.maps import gaussian_matrix
from clipad.model.prompts import PROMPT_SETS
from clipad.model.reference import ReferenceMaps, bake, build_memory, k_center, patch_tokens, score_constants
from clipad.model.sdp import SDPModel
from clipad.runtime.backends import open_backend
from tests.helpers import TINY, assert_one_line_error, run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from clipad.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("refdata") / "synth"
    make_synthetic(root, n_train=4, n_good=2, n_defect=2)
    return root


@pytest.fixture(scope="module")
def base(tiny):
    text = F.normalize(
        torch.randn(tiny.clip.visual.proj.shape[1], 2, generator=torch.Generator().manual_seed(3)), dim=0
    )
    return SDPModel(tiny.clip.visual, text, tiny.image_size).eval()


def good_images(data: Path, category: str, size: int) -> np.ndarray:
    return np.stack([load_image(p, size) for p in sorted((data / category / "train" / "good").iterdir())])


@pytest.fixture(scope="module")
def exported(tiny, data, tmp_path_factory):
    """Fused (default) and reference-mode artifacts of the tiny model with K = 3."""
    root = tmp_path_factory.mktemp("refexports")
    out = {}
    for mode, method in (("fused", "sdp"), ("reference", "reference")):
        cfg = ExportConfig(
            category="fabric",
            out=root / mode,
            method=method,
            prompts=PROMPT_SETS["industrial"],
            max_batch=4,
            reference=ReferenceConfig(str(data / "fabric" / "train" / "good"), 3, 1024),
            triton_repo=root / f"triton-{mode}",
        )
        out[mode] = export(tiny, cfg, Tasks(None))
    return out


def test_fp16_graph_gated_on_reference_maps(tiny, data, tmp_path):
    """`--gate-data` judges the ONNX FP16 graph by its AUROC drop on labelled images, on maps that
    carry signal (reference mode); the recorded FP32 figure is the FP32 graph's own."""
    from clipad.deploy.quality_gate import gate_images
    from clipad.evaluation.metrics import binary_metrics

    cfg = ExportConfig(
        category="fabric",
        out=tmp_path / "gated",
        prompts=PROMPT_SETS["industrial"],
        max_batch=4,
        method="reference",
        precision="fp16",
        reference=ReferenceConfig(str(data / "fabric" / "train" / "good"), 3, 1024),
        gate_root=data,
    )
    art = export(tiny, cfg, Tasks(None))
    gate = Manifest.read(art.root / "manifest.json").parity.gates["fp16"]
    gate_set = gate_images(data, "fabric", art.geometry)
    images, masks = gate_set.images, gate_set.masks
    assert gate.n_images == len(images) and 0 < gate.n_anomalous < gate.n_images
    amap, _ = open_backend(art, "onnxruntime", "fp32", "cpu")(images)
    assert gate.pixel_auroc_fp32 == pytest.approx(binary_metrics(masks, amap)["auroc"], abs=1e-6)
    assert gate.pixel_auroc_fp32 > 0.8  # the reference maps detect the synthetic defects even with random weights
    assert gate.passed == (max(gate.pixel_drop_points, gate.image_drop_points) <= gate.max_drop_points)
    assert gate.agreement.against == "onnxruntime fp32"


def test_gate_decides_whether_the_fp16_graph_is_kept(tiny, data, tmp_path):
    """With --gate-data and --precision all, the FP16 graph is kept exactly when its AUROC gate
    passed, whatever its map agreement on random frames (recorded beside it); at a zero limit
    either outcome can happen, and the artifacts must match it."""
    cfg = ExportConfig(
        category="fabric",
        out=tmp_path / "all",
        prompts=PROMPT_SETS["industrial"],
        max_batch=4,
        method="reference",
        precision="all",
        reference=ReferenceConfig(str(data / "fabric" / "train" / "good"), 3, 1024),
        gate_root=data,
        max_auroc_drop=0.0,
    )
    art = export(tiny, cfg, Tasks(None))
    m = Manifest.read(art.root / "manifest.json")
    gate = m.parity.gates["fp16"]
    kept = gate.passed
    assert ("fp16" in m.precisions) == kept == (art.root / "model.fp16.onnx").is_file()
    assert bool(m.parity.figures("fp16").dropped) == (not kept)
    assert any("fails its quality gate" in w for w in m.warnings) == (not kept)
    if m.parity.figures("fp16").violations:
        assert any("its AUROC quality gate decides" in w for w in m.warnings)


# --- memory and coreset -------------------------------------------------------------------


def test_k_center_radius_is_the_coverage_radius():
    x = F.normalize(torch.randn(300, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    idx, radius = k_center(x, 40)
    assert len(idx) == 40 and len(set(idx.tolist())) == 40
    brute = (1 - x @ x[idx].T).min(dim=1).values.max().item()  # farthest point from its nearest selected one
    assert radius == pytest.approx(brute, abs=1e-6)
    assert radius > 0
    idx_all, r0 = k_center(x, 300)
    assert len(idx_all) == 300 and r0 == 0.0
    # greedy k-center is a 2-approximation: more centres never cover worse
    assert k_center(x, 80)[1] <= radius + 1e-6


@pytest.mark.parametrize("bound", [10, 50, 10_000])
def test_memory_shape_bound_and_unit_rows(base, data, bound):
    tokens = patch_tokens(base, torch.from_numpy(good_images(data, "fabric", base.image_size)))  # [K, S, P, W]
    k, s, p, w = tokens.shape
    pool = tokens.permute(1, 0, 2, 3).reshape(s, k * p, w)
    mem = build_memory(pool, bound)
    assert mem.tokens.shape == (s, min(bound, k * p), w)
    assert torch.allclose(mem.tokens.norm(dim=-1), torch.ones(1), atol=1e-5)
    assert mem.nbytes == s * min(bound, k * p) * w * 4
    assert all((r > 0) == (bound < k * p) for r in mem.radius)


# --- the map ------------------------------------------------------------------------------


def test_reference_map_matches_direct_computation(base, data, tiny):
    imgs = good_images(data, "fabric", tiny.image_size)
    tokens = patch_tokens(base, torch.from_numpy(imgs))
    memory = build_memory(tokens[:2].permute(1, 0, 2, 3).reshape(tokens.shape[1], -1, tokens.shape[3]), 10_000).tokens
    maps = ReferenceMaps(base.vit.grid, tiny.image_size, base.sigma, memory)
    with torch.no_grad():
        got = maps(tokens[2:]).numpy()
    # direct: numpy cosine distances per stage, summed, bilinear align_corners=True, then scipy-style blur
    t, m = tokens[2:].numpy().astype(np.float64), memory.numpy().astype(np.float64)
    t = t / np.linalg.norm(t, axis=-1, keepdims=True)
    d = (1 - np.einsum("bspw,smw->bspm", t, m).max(-1)).sum(1)
    g = base.vit.grid
    up = F.interpolate(
        torch.from_numpy(d.reshape(-1, 1, g, g)), size=tiny.image_size, mode="bilinear", align_corners=True
    )[:, 0]
    blur = gaussian_matrix(tiny.image_size, base.sigma)
    want = blur @ up.numpy() @ blur.T
    np.testing.assert_allclose(got, want, atol=2e-5)
    # a reference image against a memory holding it: distance 0 everywhere
    with torch.no_grad():
        assert maps(tokens[:1]).abs().max() < 1e-4


def test_modes(base, data, tiny):
    imgs = good_images(data, "fabric", tiny.image_size)
    test = torch.from_numpy(
        np.stack([load_image(p, tiny.image_size) for p in sorted((data / "fabric" / "test" / "scratch").iterdir())])
    )
    fused = bake(base, imgs[:3], 1024, reference_only=False).model
    only = bake(base, imgs[:3], 1024, reference_only=True).model
    assert not fused.reference_only and only.reference_only
    with torch.no_grad():
        zmap, zprob = base(test)
        rmap = only.reference(patch_tokens(base, test))
        fmap, fprob = fused(test)
        omap, oprob = only(test)
    torch.testing.assert_close(omap, rmap)
    torch.testing.assert_close(fmap, zmap + rmap)
    c, s = fused.score
    torch.testing.assert_close(fprob, 0.5 * (zprob + torch.sigmoid((fmap.flatten(1).amax(1) - c) / s)))
    c, s = only.score
    torch.testing.assert_close(oprob, torch.sigmoid((omap.flatten(1).amax(1) - c) / s))
    assert ((oprob >= 0) & (oprob <= 1)).all()


@pytest.mark.parametrize("only", [False, True])
def test_flop_count_includes_the_memory_product(base, data, tiny, only):
    """Fused: every product FlopCounterMode sees; reference mode: the same less the V-V path,
    which the torch module runs but the exported graph drops."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from clipad.methods.registry import get_method
    from clipad.model.flops import ViTDims

    model = bake(base, good_images(data, "fabric", tiny.image_size)[:3], 50, only).model
    # the math SDPA kernel: the fused CPU kernel hides its products from FlopCounterMode
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.from_numpy(good_images(data, "washer", tiny.image_size)[:2]))
    dims = ViTDims.from_visual(tiny.clip.visual, tiny.image_size)
    want = get_method("reference" if only else "sdp").flops(dims, 50)
    assert want["reference"] > 0
    assert counter.get_total_flops() == 2 * (want["total"] + (get_method("sdp").flops(dims)["vv_path"] if only else 0))


def test_score_constants():
    sc = score_constants([0.2, 0.4, 0.3])
    assert sc.center == pytest.approx(0.4) and sc.scale == pytest.approx(np.std([0.2, 0.4, 0.3]))
    assert score_constants([0.5, 0.5]).scale > 0  # floored
    one = score_constants([])
    assert one.scale == 1.0 and one.method.startswith("none")


# --- export -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fused", "reference"])
def test_graph_matches_torch_and_manifest(exported, tiny, data, uint8_images, mode):
    art = exported[mode]
    m = art.manifest
    assert m.mode == ("reference" if mode == "reference" else "sdp")
    r = m.reference
    files = sorted((data / "fabric" / "train" / "good").iterdir())[:3]
    assert [i.name for i in r.images] == [f.name for f in files]
    assert [i.sha256 for i in r.images] == [file_sha256(f) for f in files]
    assert r.shots == 3 and r.memory_patches == 1024 and r.stages == "sum"
    p = tiny.clip.visual.positional_embedding.shape[0] - 1
    assert r.patches_per_stage == r.source_patches == 3 * p and r.coreset_radius == [0.0] * 4
    assert r.memory_bytes == 4 * 3 * p * tiny.clip.visual.conv1.out_channels * 4
    assert r.source_size == [160, 128] and len(r.score.maxima) == 3
    assert m.files[REFERENCE_MEMORY] == file_sha256(art.root / REFERENCE_MEMORY)
    assert m.parity.figures("fp32").rel_l2 < 1e-4
    ref = reference_model(art)
    x = uint8_images(3, tiny.image_size, seed=5).numpy()
    with torch.no_grad():
        want_map, want_prob = (t.numpy() for t in ref(torch.from_numpy(x)))
    with OnnxRuntimeRunner(art.root / ONNX_FP32) as runner:
        got_map, got_prob = runner.run(x, len(x))
    np.testing.assert_allclose(got_map, want_map, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got_prob, want_prob, atol=1e-5)
    assert unsupported_ops(art.root / ONNX_FP32) == []
    # the manifest round-trips with its record
    assert Manifest.read(art.root / MANIFEST) == m


@pytest.mark.parametrize("mode", ["fused", "reference"])
def test_triton_repository_unchanged_in_contract(exported, mode):
    from clipad.deploy.triton_repo import validate_config

    art = exported[mode]
    repo = art.root.parent / f"triton-{mode}"
    cfg = validate_config(
        (repo / "fabric_onnx" / "config.pbtxt").read_text(), art.manifest.onnx, art.manifest.max_batch
    )
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 4
    assert [o.name for o in cfg.output] == ["anomaly_map", "image_prob"] and [i.name for i in cfg.input] == ["image"]
    assert file_sha256(repo / "fabric_onnx" / "1" / "model.onnx") == art.manifest.files[ONNX_FP32]


def test_fp16_keeps_the_memory_product_in_fp32(exported, tmp_path):
    from clipad.deploy.fp16 import convert_fp16

    src = exported["fused"].root / ONNX_FP32
    dst = exported["fused"].root / ONNX_FP16
    if not dst.is_file():  # dropped by the parity gate on random weights: convert with the same policy
        dst = tmp_path / "m.fp16.onnx"
        convert_fp16(src, dst)
    g = onnx.load(str(dst)).graph
    big = [t for t in g.initializer if len(t.dims) == 3 and t.dims[0] == 4]  # the memory [S, M, W]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT for t in big)
    consumers = [n for n in g.node if any(i == big[0].name for i in n.input)]
    assert consumers and all(not n.name.startswith("/vit/") for n in consumers)
    assert unsupported_ops(dst) == []


def test_reference_mode_graph_has_no_text_path(exported):
    ref = onnx.load(str(exported["reference"].root / ONNX_FP32)).graph
    fused = onnx.load(str(exported["fused"].root / ONNX_FP32)).graph
    assert len(ref.node) < len(fused.node)
    assert not any(n.op_type == "Softmax" and not n.name.startswith("/vit/") for n in ref.node)


def test_old_manifest_without_reference_still_loads(exported, tmp_path):
    data = json.loads((exported["fused"].root / MANIFEST).read_text())
    data.pop("reference")
    data["files"].pop(REFERENCE_MEMORY)
    data["mode"] = "sdp"
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    assert Manifest.read(tmp_path / MANIFEST).reference is None
    data["mode"] = "reference"
    (tmp_path / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ClipadError, match="mode reference needs a reference memory"):
        Manifest.read(tmp_path / MANIFEST)


# --- bad input, one line each --------------------------------------------------------------


def test_bad_reference_input(tmp_path, capsys, data):
    good = sorted((data / "fabric" / "train" / "good").iterdir())
    out = tmp_path / "art"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "export", "--category", "c", "--reference", empty, "--out", out, *TINY)
    assert_one_line_error(code, err, "no reference images found")
    code, _, err = run(
        capsys,
        "export",
        "--category",
        "c",
        "--reference",
        data / "fabric" / "train" / "good",
        "--shots",
        9,
        "--out",
        out,
        *TINY,
    )
    assert_one_line_error(code, err, "--shots 9 is more than the 4 reference images")
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(good[0], bad / "a.png")
    (bad / "b.png").write_bytes(b"not a png")
    code, _, err = run(capsys, "export", "--category", "c", "--reference", bad, "--out", out, *TINY)
    assert_one_line_error(code, err, "reference image unreadable", "b.png")
    sized = tmp_path / "sized"
    sized.mkdir()
    shutil.copy(good[0], sized / "a.png")
    Image.open(good[1]).resize((100, 100)).save(sized / "b.png")
    code, _, err = run(capsys, "export", "--category", "c", "--reference", sized, "--out", out, *TINY)
    assert_one_line_error(code, err, "is 100x100 but the reference set is 160x128")
    twice = tmp_path / "twice"
    twice.mkdir()
    shutil.copy(good[0], twice / "a.png")
    shutil.copy(good[0], twice / "b.png")
    code, _, err = run(capsys, "export", "--category", "c", "--reference", twice, "--out", out, *TINY)
    assert_one_line_error(code, err, "is identical to")
    code, _, err = run(capsys, "export", "--category", "c", "--method", "reference", "--out", out, *TINY)
    assert_one_line_error(code, err, "--method reference needs --reference")
    code, _, err = run(
        capsys, "export", "--category", "c", "--reference", good[0], "--memory-patches", 0, "--out", out, *TINY
    )
    assert_one_line_error(code, err, "--memory-patches must be an integer in [1, 10000000]")
    assert not out.exists()  # nothing half-written


def test_single_reference_image_warns(tiny, data, tmp_path):
    cfg = ExportConfig(
        category="fabric",
        out=tmp_path / "one",
        prompts=PROMPT_SETS["industrial"],
        max_batch=2,
        precision="fp32",
        reference=ReferenceConfig(str(data / "fabric" / "train" / "good"), 1),
    )
    art = export(tiny, cfg, Tasks(None))
    assert art.manifest.reference.score.maxima == []
    assert any("one reference image" in w for w in art.manifest.warnings)


# --- calibration, reference add, eval --shots -----------------------------------------------


def test_calibrate_refuses_reference_images(exported, data, tmp_path, capsys):
    root = tmp_path / "art"
    shutil.copytree(exported["fused"].root, root)
    mixed = tmp_path / "good"
    mixed.mkdir()
    for p in sorted((data / "fabric" / "test" / "good").iterdir()):
        shutil.copy(p, mixed / p.name)
    shutil.copy(sorted((data / "fabric" / "train" / "good").iterdir())[1], mixed / "renamed.png")
    code, _, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        root,
        "--good",
        mixed,
        "--backend",
        "onnxruntime",
        "--precision",
        "fp32",
        "--quiet",
    )
    assert_one_line_error(code, err, "are reference images of these artifacts", "renamed.png")
    assert load_artifacts(root).manifest.calibration is None
    (mixed / "renamed.png").unlink()
    code, out, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        root,
        "--good",
        mixed,
        "--backend",
        "onnxruntime",
        "--precision",
        "fp32",
        "--quiet",
    )
    assert code == 0, err
    assert load_artifacts(root).manifest.calibration is not None


def test_reference_add(exported, data, tmp_path, capsys):
    root = tmp_path / "art"
    shutil.copytree(exported["fused"].root, root)
    code, _, err = run(
        capsys,
        "calibrate",
        "--artifacts",
        root,
        "--good",
        data / "fabric" / "test" / "good",
        "--backend",
        "onnxruntime",
        "--precision",
        "fp32",
        "--quiet",
    )
    assert code == 0, err
    before = load_artifacts(root).manifest
    extra = tmp_path / "extra"
    extra.mkdir()
    fourth = sorted((data / "fabric" / "train" / "good").iterdir())[3]
    shutil.copy(fourth, extra / "new.png")
    code, out, err = run(capsys, "reference", "add", extra, "--artifacts", root, "--quiet")
    assert code == 0, err
    after = load_artifacts(root).manifest
    r = after.reference
    assert len(r.images) == 4 and r.images[-1].name == "new.png" and r.images[-1].sha256 == file_sha256(fourth)
    assert r.patches_per_stage == before.reference.patches_per_stage * 4 // 3
    assert len(r.score.maxima) == 4 and r.score.maxima[:3] == before.reference.score.maxima
    assert after.calibration is None and any("calibration constants" in w for w in after.warnings)
    assert after.parity.figures("fp32").rel_l2 < 1e-4 and after.files[ONNX_FP32] != before.files[ONNX_FP32]
    assert "calibrate" in err
    # the new image now scores as a reference image: its map is the zero-shot map alone
    ref = reference_model(load_artifacts(root))
    x = torch.from_numpy(np.array(load_image(fourth, ref.image_size)[None]))
    with torch.no_grad():
        ref_map = ref.reference(patch_tokens(ref, x))
    assert ref_map.abs().max() < 1e-4
    code, _, err = run(capsys, "reference", "add", extra, "--artifacts", root, "--quiet")
    assert_one_line_error(code, err, "is already a reference image")
    small = tmp_path / "small"
    small.mkdir()
    Image.open(fourth).resize((64, 64)).save(small / "s.png")
    code, _, err = run(capsys, "reference", "add", small, "--artifacts", root, "--quiet")
    assert_one_line_error(code, err, "is 64x64 but the reference set is 160x128")


def test_reference_add_needs_a_reference(tiny, tmp_path, capsys, data):
    cfg = ExportConfig(
        category="fabric", out=tmp_path / "zs", prompts=PROMPT_SETS["industrial"], max_batch=2, precision="fp32"
    )
    export(tiny, cfg, Tasks(None))
    code, _, err = run(
        capsys, "reference", "add", data / "fabric" / "train" / "good", "--artifacts", tmp_path / "zs", "--quiet"
    )
    assert_one_line_error(code, err, "has no reference memory")


def test_eval_shots(data, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, err = run(
        capsys, "eval", "--dataset", "mvtec", "--root", data, "--shots", 2, "--shot-seeds", "0,1,2", "--out", out, *TINY
    )
    assert code == 0, err
    res = json.loads(out.read_text())
    assert list(res) == ["fabric", "washer", "mean"]
    for cat in ("fabric", "washer"):
        s = res[cat]["shots"]
        assert s["k"] == 2 and s["seeds"] == [0, 1, 2] and len(s["per_seed"]) == 3
        assert all(len(v) == 2 for v in s["reference_images"].values())
        aurocs = [e["pixel"]["auroc"] for e in s["per_seed"]]
        assert res[cat]["pixel"]["auroc"] == pytest.approx(np.mean(aurocs))
        assert s["std"]["pixel"]["auroc"] == pytest.approx(np.std(aurocs))
    assert "K=2 over seeds 0,1,2" in stdout
    code, _, err = run(capsys, "eval", "--dataset", "mvtec", "--root", data, "--shots", 5, "--out", out, *TINY)
    assert_one_line_error(code, err, "--shots 5 is more than the 4 good training images")
    code, _, err = run(
        capsys, "eval", "--dataset", "mvtec", "--root", data, "--method", "reference", "--out", out, *TINY
    )
    assert_one_line_error(code, err, "--method reference needs --shots")
