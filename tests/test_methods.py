"""The method interface (clipad.methods): the registry, each method through export and back, and
export, eval and calibration asking the method rather than comparing names."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import get_args

import numpy as np
import pytest
import torch

from clipad.core.choices import Method as MethodName
from clipad.core.errors import ClipadError
from clipad.core.progress import Tasks
from clipad.deploy.export import ExportConfig, export
from clipad.deploy.manifest import Manifest
from clipad.deploy.parity import parity_images
from clipad.deploy.rebuild import reference_model
from clipad.deploy.reference_set import ReferenceConfig
from clipad.evaluation.evaluate import EvalConfig, evaluate
from clipad.methods import registry
from clipad.methods.anomalydino import DinoOptions
from clipad.methods.registry import METHODS, get_method
from clipad.methods.sdp import Sdp
from clipad.model.heads import save_heads
from clipad.model.loading import WeightSpec
from clipad.model.prompts import PROMPT_SETS
from clipad.runtime.backends import open_backend
from tests.helpers import TINY, assert_one_line_error, random_heads, run


def test_registry_lists_exactly_the_method_choices():
    assert tuple(METHODS) == get_args(MethodName) == ("sdp", "sdp+", "reference", "anomalydino")
    assert all(m.name == name for name, m in METHODS.items())


@pytest.mark.parametrize("option", ["--method", "mode"])
def test_unknown_method_is_one_line(option):
    with pytest.raises(ClipadError) as e:
        get_method("patchcore", option)
    assert str(e.value) == f"{option} must be one of sdp, sdp+, reference, anomalydino, got 'patchcore'"


def test_the_registry_imports_no_torch():
    """Serving (calibration, the runtime) reads the registry: it must not pull in torch."""
    code = "import sys, clipad.methods.registry, clipad.calibration.constants; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert not [m for m in eval(out) if m.split(".")[0] in ("torch", "open_clip")]


@pytest.mark.parametrize(
    "name,heads,reference,error",
    [
        ("sdp", False, False, None),
        ("sdp", True, False, "--method sdp takes no --heads"),
        ("sdp+", False, False, "--method sdp+ needs --heads FILE"),
        ("sdp+", True, True, None),
        ("reference", False, False, "--method reference needs --reference GOOD_IMAGES"),
        ("reference", True, True, "--method reference takes no --heads"),
        ("reference", False, True, None),
    ],
)
def test_each_method_checks_its_options(name, heads, reference, error):
    method = get_method(name)
    if error is None:
        method.check_options(heads, reference, "--reference GOOD_IMAGES")
        assert method.manifest_error(heads, reference) is None
    else:
        with pytest.raises(ClipadError, match=re.escape(error)):
            method.check_options(heads, reference, "--reference GOOD_IMAGES")
        assert method.manifest_error(heads, reference) is not None


EXPORTED = {name: m for name, m in METHODS.items() if m.exported}


def test_every_method_is_exported():
    assert set(EXPORTED) == set(METHODS)


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny, synth_root):
    """Every exported method (``Method.exported``) exported (FP32): the CLIP methods from the tiny
    model, AnomalyDINO from random ViT-S/14 weights at 56 px: name -> Artifacts."""
    root = tmp_path_factory.mktemp("methods")
    visual = tiny.clip.visual
    save_heads(root / "heads.safetensors", random_heads(visual.conv1.out_channels, visual.proj.shape[1], seed=2))
    good = str(synth_root / "washer" / "train" / "good")
    out = {}
    for name, method in EXPORTED.items():
        dino = method.backbone == "dinov2"
        cfg = ExportConfig(
            category="washer",
            out=root / name.replace("+", "_plus"),
            method=method.name,
            heads_path=root / "heads.safetensors" if method.takes_heads else None,
            reference=ReferenceConfig(good) if method.needs_reference else None,
            prompts=PROMPT_SETS["industrial"],
            max_batch=2,
            precision="fp32",
            dino=DinoOptions(resolution=56) if dino else None,
        )
        loaded = method.load(WeightSpec(model="dinov2_vits14", random_weights=True)) if dino else tiny
        out[name] = export(loaded, cfg, Tasks(None))
    return out


@pytest.mark.parametrize("name", list(EXPORTED))
def test_every_method_round_trips(exports, name):
    """Export records the method; the manifest read back names the same method and holds the
    records it needs; the PyTorch reference rebuilt from it gives the served graph's outputs."""
    art = exports[name]
    manifest = Manifest.read(art.root / "manifest.json")
    method = get_method(manifest.mode)
    assert method is METHODS[name]
    assert (manifest.heads_sha256 is not None) == method.takes_heads
    assert (manifest.reference is not None or manifest.anomalydino is not None) == method.needs_reference
    assert (manifest.rvs is not None) == (method.backbone == "clip")
    x = parity_images(art.geometry, 2)
    with torch.no_grad():
        want = [t.numpy() for t in reference_model(art)(torch.from_numpy(x))]
    got = open_backend(art, "onnxruntime", "fp32", "cpu")(x)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-5)


class WiderSdp(Sdp):
    """SDP whose model and default smoothing differ from the registered one: what export and
    eval produce shows whether they asked the method."""

    def default_sigma(self, dataset: str) -> float:
        return 2.0

    def build(self, loaded, text, sigma, heads=None):
        return super().build(loaded, text, 2.0, heads)


def test_export_builds_the_graph_the_method_builds(tmp_path, tiny, monkeypatch):
    plain = export(
        tiny,
        ExportConfig("washer", tmp_path / "plain", prompts=PROMPT_SETS["industrial"], precision="fp32"),
        Tasks(None),
    )
    monkeypatch.setitem(registry.METHODS, "sdp", WiderSdp())
    wider = export(
        tiny,
        ExportConfig("washer", tmp_path / "wider", prompts=PROMPT_SETS["industrial"], precision="fp32"),
        Tasks(None),
    )
    x = parity_images(plain.geometry, 2)
    plain_map = open_backend(plain, "onnxruntime", "fp32", "cpu")(x)[0]
    wider_map = open_backend(wider, "onnxruntime", "fp32", "cpu")(x)[0]
    assert not np.allclose(plain_map, wider_map, rtol=1e-3)  # the method's sigma 2, not the config's 8
    text = torch.from_numpy(plain.text_features().T.copy())
    with torch.no_grad():
        want = WiderSdp().build(tiny, text, 8.0).eval()(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(wider_map, want, rtol=1e-4, atol=1e-5)


def test_eval_smooths_and_builds_with_the_method(tiny, synth_root, monkeypatch):
    from clipad.data import load_split

    split = load_split("mvtec", synth_root, ["washer"])
    by_sigma = {s: evaluate(tiny, split, EvalConfig(sigma=s), Tasks(None)).categories["washer"] for s in (2.0, 8.0)}
    assert by_sigma[2.0].pixel != by_sigma[8.0].pixel
    monkeypatch.setitem(registry.METHODS, "sdp", WiderSdp())
    asked = evaluate(tiny, split, EvalConfig(), Tasks(None)).categories["washer"]
    assert asked.pixel == by_sigma[2.0].pixel and asked.image == by_sigma[2.0].image


def test_eval_refuses_a_few_shot_method_without_shots(tiny, synth_root):
    from clipad.data import load_split

    with pytest.raises(ClipadError, match="--method reference is evaluated with good images only"):
        evaluate(tiny, load_split("mvtec", synth_root, ["washer"]), EvalConfig(method="reference"), Tasks(None))


def test_mode_is_a_hidden_alias_of_method(capsys, tmp_path, synth_root):
    code, out, _ = run(capsys, "export", "--help")
    assert code == 0 and "--method" in out and not re.search(r"--mode\b", out)
    args = ["eval", "--dataset", "mvtec", "--root", synth_root, "--out", tmp_path / "r.json", *TINY]
    code, _, err = run(capsys, *args, "--mode", "reference")
    assert_one_line_error(code, err, "--method reference needs --shots K")
    code, _, err = run(capsys, *args, "--method", "sdp+", "--mode", "reference")
    assert_one_line_error(code, err, "--mode is the old name of --method")
