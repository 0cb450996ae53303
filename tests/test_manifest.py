"""The typed manifest: one reader and writer of manifest.json, its validation, its updates, and
the artifact file names defined in one place.

``OLD_MANIFEST`` is the manifest of a real export made before the manifest was typed (clipad-tiny,
random weights, sdp+, then `clipad calibrate --int8` and `clipad calibrate --anomalous --masks`):
artifacts made then must still load, unchanged.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from clipad.calibration.constants import Calibration
from clipad.core.errors import ClipadError
from clipad.core.progress import Tasks
from clipad.deploy.artifacts import load_artifacts, made_by_calibrate
from clipad.deploy.manifest import (
    ARTIFACT_FILES,
    MANIFEST,
    PLAN,
    PLAN_META,
    CalibrationEntry,
    EngineMeta,
    Int8Entry,
    Manifest,
    ParityFigures,
    Tolerance,
)
from tests.helpers import assert_one_line_error, run

ROOT = Path(__file__).resolve().parents[1]

OLD_MANIFEST = json.loads(r"""
{
  "format_version": 1,
  "created": "2026-11-30T15:18:15+0000",
  "category": "washer",
  "object_name": "washer",
  "model": "clipad-tiny",
  "weights": {"source": "random", "seed": 0},
  "mode": "sdp+",
  "heads_sha256": "ee81c454d8298686f290863e568f0d64123efed032eb026ca48fe3e543721c59",
  "rvs": {
    "method": "dbscan",
    "profile": "mvtec",
    "dbscan": {"eps": 0.5, "min_samples": 15},
    "used": ["dbscan", "dbscan"],
    "notes": []
  },
  "prompts": {
    "set": "industrial",
    "source": "industrial",
    "sha256": "a9928cc02bea0258c1f49d2afb4d9d93d003d249d8ac58e4f3b7b9c9bb96d1e1",
    "n_normal": 198,
    "n_abnormal": 220
  },
  "image_size": 96,
  "mean": [0.48145466, 0.4578275, 0.40821073],
  "std": [0.26862954, 0.26130258, 0.27577711],
  "sigma": 8.0,
  "max_batch": 4,
  "precisions": ["fp32", "fp16", "int8"],
  "onnx": {
    "inputs": [{"name": "image", "dtype": "uint8", "shape": ["batch", 96, 96, 3]}],
    "outputs": [{"name": "anomaly_map", "dtype": "float32", "shape": ["batch", 96, 96]},
                {"name": "image_prob", "dtype": "float32", "shape": ["batch"]}],
    "opset": 17
  },
  "parity": {
    "tolerances": {
      "fp32": {"rel_l2": 0.0001, "prob_max_abs": 0.0001, "top1pct_agreement": 0.99},
      "fp16": {"rel_l2": 0.01, "prob_max_abs": 0.002, "top1pct_agreement": 0.95},
      "int8": {"rel_l2": 0.25, "prob_max_abs": 0.25, "top1pct_agreement": 0.9}
    },
    "fp32": {
      "max_abs": 1.6689300537109375e-06,
      "rel_l2": 2.4609455152614494e-07,
      "prob_max_abs": 2.60770320892334e-08,
      "top1pct_agreement": 1.0,
      "batch1_rel_l2": 1.9983357012828474e-07,
      "against": "pytorch reference",
      "inputs": "3 synthetic images (2 parts with defects, 1 noise), batch 3 and batch 1",
      "violations": []
    },
    "fp16": {
      "max_abs": 0.003712892532348633,
      "rel_l2": 0.0005446987590001705,
      "prob_max_abs": 0.00018298625946044922,
      "top1pct_agreement": 0.9927536231884058,
      "batch1_rel_l2": 0.0006515027839878642,
      "against": "fp32 onnx",
      "inputs": "3 synthetic images (2 parts with defects, 1 noise), batch 3 and batch 1",
      "violations": [],
      "nodes": {"nodes": 1540, "fp32_nodes": 306, "fp16_nodes": 1234}
    },
    "int8": {
      "max_abs": 0.0743856430053711,
      "rel_l2": 0.010723522187952847,
      "prob_max_abs": 0.01666848361492157,
      "top1pct_agreement": 0.9011857707509883,
      "against": "fp32 onnx",
      "n_images": 11,
      "calibration_images": 20
    }
  },
  "calibration": {
    "version": 1,
    "image_prob_range": [0.0032539742533117533, 0.9818078875541687],
    "map_max_range": [1.449472188949585, 2.5553579330444336],
    "threshold": 0.4542802339905064,
    "score_range": [0.4542802339905064, 1.4663578125769228],
    "pixel_threshold": 2.1500678062438965,
    "method": "F1-optimal on the labelled images",
    "pixel_method": "F1-optimal on the masks' pixels",
    "target_fpr": 0.01,
    "achieved": {
      "f1": 0.4444444444444445,
      "fpr": 1.0,
      "recall": 1.0,
      "pixel_f1": 0.026977446854429696,
      "pixel_fpr": 0.023502604166666666
    },
    "set": {
      "good": 20,
      "anomalous": 8,
      "skipped": 0,
      "sha256": "dfdea51ff5f2a0052f46e4b39ff901849e9d8097d612f99258d80d8e14947b20"
    },
    "backend": "onnxruntime fp32 (CPUExecutionProvider)",
    "model_files": {
      "model.onnx": "b94fd6a010a55cf19772c7351859072b3a29c8ee426eaba9731380067f1a5190",
      "text_features.npy": "ec57f3188c466d910c2ca910270af1605bea1ab806d83dfaa3ef5817e55f456d"
    },
    "created": "2026-11-30T15:18:26+0000"
  },
  "timings_s": {"text_s": 2.41, "onnx_s": 1.49, "fp16_s": 0.14, "parity_s": 1.84},
  "warnings": [],
  "versions": {
    "clipad": "0.1.0",
    "torch": "2.14.1+cu130",
    "open_clip": "3.3.0",
    "onnx": "1.23.2",
    "onnxruntime": "1.32.0"
  },
  "files": {
    "text_features.npy": "ec57f3188c466d910c2ca910270af1605bea1ab806d83dfaa3ef5817e55f456d",
    "model.onnx": "b94fd6a010a55cf19772c7351859072b3a29c8ee426eaba9731380067f1a5190",
    "model.fp16.onnx": "7edfdc6e1ec7517da80c4bd1abb93c90415545acde82de98c132f9e712867f39",
    "heads.safetensors": "ee81c454d8298686f290863e568f0d64123efed032eb026ca48fe3e543721c59",
    "model.int8.onnx": "9489225dce6907a48d5c7d4042cc1cfec842c107e6ad39d2d021ee7f09b0d89e"
  },
  "int8": {
    "min_agreement": 0.0,
    "format": "QDQ, symmetric INT8 activations and per-channel weights",
    "ops": ["MatMul", "Gemm", "Conv"],
    "calibration": "MinMax",
    "source_sha256": "b94fd6a010a55cf19772c7351859072b3a29c8ee426eaba9731380067f1a5190"
  }
}
""")

# The FP16 parity entry of a real export whose FP16 graph missed (forced) limits and was dropped.
DROPPED_FP16 = {
    "max_abs": 0.00011137500405311584,
    "rel_l2": 0.003955378725136603,
    "prob_max_abs": 0.0006916522979736328,
    "top1pct_agreement": 0.9746376811594203,
    "batch1_rel_l2": 0.0025684389774744154,
    "against": "fp32 onnx",
    "inputs": "3 synthetic images (2 parts with defects, 1 noise), batch 3 and batch 1",
    "violations": [
        "rel_l2 3.96e-03 > 0e+00",
        "prob_max_abs 6.92e-04 > 0e+00",
        "top-1% agreement 0.975 < 1.1",
        "batch-1 rel_l2 2.57e-03 > 0e+00",
    ],
    "dropped": True,
    "nodes": {"nodes": 1498, "fp32_nodes": 273, "fp16_nodes": 1225},
}

# A sidecar as tensorrt.build.build_engine writes it (TensorRT cannot run here, so written by hand).
ENGINE = {
    "tensorrt": "10.13.0",
    "gpu": "NVIDIA L4",
    "compute_capability": "8.9",
    "category": "washer",
    "input": {"name": "image", "dtype": "uint8", "shape": ["batch", 96, 96, 3]},
    "profile": {"min": 1, "opt": 1, "max": 4},
    "onnx": "model.onnx",
    "onnx_sha256": OLD_MANIFEST["files"]["model.onnx"],
    "precision": "fp16",
    "strongly_typed": False,
    "layers": {"fp16": 120, "fp32": 40},
    "fp16_layer_fraction": 0.75,
    "build_s": 31.5,
}


def write(tmp_path: Path, data: dict) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    return tmp_path / MANIFEST


def test_old_layout_loads_typed_and_round_trips(tmp_path):
    path = write(tmp_path, OLD_MANIFEST)
    m = Manifest.read(path)
    assert m.mode == "sdp+" and m.weights.source == "random" and m.weights.seed == 0
    assert m.image_size == 96 and m.max_batch == 4 and m.sigma == 8.0 and m.precisions == ["fp32", "fp16", "int8"]
    assert isinstance(m.calibration, CalibrationEntry) and m.calibration.set.good == 20
    assert m.parity.figures("int8").n_images == 11 and m.parity.tolerances["fp16"].rel_l2 == 0.01
    assert m.int8.ops == ["MatMul", "Gemm", "Conv"] and m.engine is None
    assert m.model_dump() == OLD_MANIFEST  # nothing added, dropped or renamed
    assert m.to_json() == path.read_text()  # byte for byte, key order included
    m.write(tmp_path / "again.json")
    assert Manifest.read(tmp_path / "again.json") == m


def test_dropped_fp16_and_engine_entries_load(tmp_path):
    data = copy.deepcopy(OLD_MANIFEST)
    data["precisions"] = ["fp32", "int8"]
    del data["files"]["model.fp16.onnx"]
    data["parity"]["fp16"] = DROPPED_FP16
    data["engine"] = ENGINE
    data["files"].update({PLAN: "a" * 64, PLAN_META: "b" * 64})
    m = Manifest.read(write(tmp_path, data))
    assert m.parity.figures("fp16").dropped and m.engine.profile.max == 4 and m.engine.precision == "fp16"
    assert m.model_dump() == data


def test_fresh_export_has_the_old_layout(tmp_path, tiny):
    """The layout written today is the one written before: the same keys at every level."""
    from clipad.deploy.export import ExportConfig, export
    from clipad.model.prompts import PROMPT_SETS

    art = export(
        tiny, ExportConfig(category="washer", out=tmp_path / "a", prompts=PROMPT_SETS["industrial"]), Tasks(None)
    )
    text = (art.root / MANIFEST).read_text()
    data = json.loads(text)
    assert Manifest.read(art.root / MANIFEST).to_json() == text
    assert set(data) == set(OLD_MANIFEST) - {"int8"} and data["calibration"] is None and data["heads_sha256"] is None
    for key in ("weights", "rvs", "prompts", "onnx", "timings_s", "versions"):
        assert set(data[key]) == set(OLD_MANIFEST[key]), key
    assert set(data["parity"]) <= {"tolerances", "fp32", "fp16"} and set(data["parity"]["fp32"]) == set(
        OLD_MANIFEST["parity"]["fp32"]
    )


BAD = [
    # (what, change, the one line it must give)
    ("absurd max_batch", lambda d: d.update(max_batch=0), "manifest.json: max_batch: must be >= 1"),
    ("absurd image_size", lambda d: d.update(image_size=-96), "manifest.json: image_size: must be > 0"),
    ("negative sigma", lambda d: d.update(sigma=-2.0), "manifest.json: sigma: must be >= 0"),
    (
        "unknown mode",
        lambda d: d.update(mode="sdp++"),
        "manifest.json: mode: must be 'sdp', 'sdp+', 'reference' or 'anomalydino' (got 'sdp++')",
    ),
    (
        "unknown precision",
        lambda d: d["precisions"].append("bf16"),
        "manifest.json: precisions[3]: must be 'fp32', 'fp16' or 'int8'",
    ),
    (
        "string for a number",
        lambda d: d.update(max_batch="8"),
        "manifest.json: max_batch: must be an integer (got '8')",
    ),
    (
        "bool for a number",
        lambda d: d.update(image_size=True),
        "manifest.json: image_size: must be an integer (got True)",
    ),
    ("number for a string", lambda d: d.update(model=7), "manifest.json: model: must be a string (got 7)"),
    ("unknown field", lambda d: d.update(colour="red"), "manifest.json: colour: unknown field"),
    ("unknown nested field", lambda d: d["rvs"].update(k=3), "manifest.json: rvs.k: unknown field"),
    ("missing field", lambda d: d.pop("sigma"), "manifest.json: sigma: missing"),
    (
        "unknown weight source",
        lambda d: d.update(weights={"source": "web"}),
        "manifest.json: weights.source: must be one of",
    ),
    (
        "wrong nested type",
        lambda d: d["calibration"].update(threshold="high"),
        "manifest.json: calibration.threshold: must be a number",
    ),
    ("negative std", lambda d: d["std"].__setitem__(1, -0.2), "manifest.json: std[1]: must be > 0"),
    (
        "bad hash",
        lambda d: d["files"].update({"model.onnx": "xyz"}),
        "manifest.json: files.model.onnx: must be a sha256",
    ),
    (
        "unknown file",
        lambda d: d["files"].update({"model.weights": "a" * 64}),
        "manifest.json: files.model.weights: not an artifact file name",
    ),
    (
        "bad dimension",
        lambda d: d["onnx"]["inputs"][0].update(shape=["batch", 0, 96, 3]),
        "manifest.json: onnx.inputs[0].shape[1]: must be a positive size",
    ),
    (
        "reversed range",
        lambda d: d["calibration"].update(score_range=[2.0, 1.0]),
        "manifest.json: calibration.score_range: must be [min, max]",
    ),
    (
        "inconsistent",
        lambda d: d["files"].pop("model.fp16.onnx"),
        "manifest.json: files: no model.fp16.onnx although precisions lists fp16",
    ),
]


@pytest.mark.parametrize("what, change, line", BAD, ids=[b[0] for b in BAD])
def test_invalid_manifest_is_one_line_naming_the_field(tmp_path, what, change, line):
    data = copy.deepcopy(OLD_MANIFEST)
    change(data)
    with pytest.raises(ClipadError) as err:
        load_artifacts(write(tmp_path, data).parent)
    assert line in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_invalid_manifest_stops_a_command_in_one_line(tmp_path, capsys):
    data = copy.deepcopy(OLD_MANIFEST)
    data["max_batch"] = 0
    code, _, err = run(capsys, "predict", str(tmp_path), "--artifacts", write(tmp_path / "art", data).parent, "--quiet")
    assert_one_line_error(code, err, "manifest.json: max_batch: must be >= 1")


def test_other_format_versions_are_refused_with_re_export(tmp_path):
    for version in (2, None, "1"):
        data = {**OLD_MANIFEST, "format_version": version}
        with pytest.raises(ClipadError, match=rf"has format version {version}; this clipad reads version 1: re-export"):
            Manifest.read(write(tmp_path, data))
    (tmp_path / MANIFEST).write_text("[1, 2]")
    with pytest.raises(ClipadError, match="not a JSON object"):
        Manifest.read(tmp_path / MANIFEST)


def test_calibration_of_another_version_is_one_line(tmp_path):
    """The calibration format has one version; another is refused in one line naming the field."""
    data = copy.deepcopy(OLD_MANIFEST)
    data["calibration"] = {**data["calibration"], "version": 2}
    with pytest.raises(ClipadError, match=r"manifest.json: calibration.version: must be 1 \(got 2\)"):
        Manifest.read(write(tmp_path, data))


def test_stale_constants_are_refused_from_the_typed_entry(tmp_path):
    m = Manifest.read(write(tmp_path, OLD_MANIFEST))
    assert Calibration.from_manifest(m).threshold == OLD_MANIFEST["calibration"]["threshold"]
    other = m.with_files({"model.onnx": "c" * 64})
    with pytest.raises(ClipadError, match=r"made for another model \(model.onnx changed since calibration\)"):
        Calibration.from_manifest(other)


def test_updates_return_new_validated_manifests(tmp_path):
    m = Manifest.read(write(tmp_path, OLD_MANIFEST))
    plain = m.with_calibration(None)
    assert plain.calibration is None and m.calibration is not None  # the original is unchanged
    figures = ParityFigures.create(
        max_abs=0.1,
        rel_l2=0.02,
        prob_max_abs=0.01,
        top1pct_agreement=0.95,
        against="fp32 onnx",
        n_images=11,
        calibration_images=16,
    )
    entry = Int8Entry.create(**{**OLD_MANIFEST["int8"], "min_agreement": 0.5})
    again = plain.with_int8("d" * 64, figures, Tolerance.create(**OLD_MANIFEST["parity"]["tolerances"]["int8"]), entry)
    assert again.precisions == ["fp32", "fp16", "int8"] and again.files["model.int8.onnx"] == "d" * 64
    assert again.parity.figures("int8") == figures and again.int8.min_agreement == 0.5
    meta = EngineMeta.create(**ENGINE)
    with pytest.raises(ClipadError, match="engine: present exactly when files lists model.plan"):
        m.with_engine(meta)  # an engine without its files is refused
    built = m.with_engine(meta, {PLAN: "e" * 64, PLAN_META: "f" * 64})
    assert built.engine == meta and built.files[PLAN] == "e" * 64
    with pytest.raises(ClipadError, match="manifest.json: max_batch: must be >= 1"):
        m.replace(max_batch=0)
    with pytest.raises(ValidationError, match="frozen"):  # records are immutable: updates go through with_* / replace
        m.max_batch = 2


def test_update_is_atomic(tmp_path, monkeypatch):
    """The file is the old one or the new one: a failed write leaves the old file (and the
    in-memory manifest) as they were, and a concurrent reader never sees a partial file."""
    path = write(tmp_path, OLD_MANIFEST)
    art = load_artifacts(tmp_path)
    before = path.read_bytes()
    real_write_text = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        art.update(art.manifest.with_calibration(None))
    monkeypatch.undo()
    assert path.read_bytes() == before and art.manifest.calibration is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]  # no temporary file left behind

    versions = [art.manifest.with_calibration(None), art.manifest]
    stop, seen, problems = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            try:
                seen.add(Manifest.read(path).calibrated)
            except ClipadError as err:
                problems.append(str(err))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            art.update(versions[i % 2])
    finally:
        stop.set()
        thread.join()
    assert not problems, problems[:3]
    assert seen <= {True, False}
    assert Manifest.read(path) == versions[1] and load_artifacts(tmp_path).manifest == versions[1]


def test_records_are_typed_and_immutable(tmp_path):
    """Fields are read as attributes; a record cannot be changed in place (updates make new ones)."""
    from pydantic import ValidationError

    m = Manifest.read(write(tmp_path, OLD_MANIFEST))
    assert m.precisions == ["fp32", "fp16", "int8"] and m.parity.figures("int8").n_images == 11
    assert m.engine is None and m.calibration.backend == "onnxruntime fp32 (CPUExecutionProvider)"
    with pytest.raises(ValidationError):
        m.max_batch = 2
    with pytest.raises(TypeError):
        m["precisions"]  # no dict-style access: the manifest is not a dict any more


def test_made_by_calibrate(tmp_path):
    write(tmp_path / "a", OLD_MANIFEST)
    assert made_by_calibrate(tmp_path / "a") == ["calibration constants", "an INT8 graph"]
    assert made_by_calibrate(tmp_path / "none") == []


def test_engine_sidecar_round_trip(tmp_path):
    meta = EngineMeta.create(**ENGINE)
    meta.write(tmp_path / PLAN_META)
    assert EngineMeta.read(tmp_path / PLAN_META) == meta and json.loads((tmp_path / PLAN_META).read_text()) == ENGINE
    (tmp_path / PLAN_META).write_text(json.dumps({**ENGINE, "precision": "int4"}))
    with pytest.raises(ClipadError, match=r"model.plan.json: precision: must be 'fp32', 'fp16' or 'int8'"):
        EngineMeta.read(tmp_path / PLAN_META)


def test_reading_the_manifest_imports_no_torch(tmp_path):
    write(tmp_path, OLD_MANIFEST)
    code = (
        "import sys; from clipad.deploy.artifacts import load_artifacts; "
        "from clipad.calibration.constants import Calibration; "
        f"Calibration.from_manifest(load_artifacts({str(tmp_path)!r}).manifest); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# String literals that still spell an artifact file name in code that other work is changing
# (help texts and messages of `clipad calibrate` and the serving options); each should use the
# constants from clipad.deploy.manifest. The count may only go down.
TRANSITION = {("cli.py", "model.int8.onnx"): 1, ("cli.py", "manifest.json"): 1}


def test_file_names_are_defined_once():
    """No code outside clipad/deploy/manifest.py spells an artifact file name (docstrings may)."""
    names = set(ARTIFACT_FILES) | {MANIFEST}
    files = [ROOT / "cli.py"] + [
        p
        for d in ("clipad_export", "calibration", "runtime")
        for p in sorted((ROOT / d).rglob("*.py"))
        if not p.is_symlink()
    ]
    found: dict[tuple[str, str], list[int]] = {}
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel == "clipad_export/deploy/manifest.py":
            continue
        tree = ast.parse(path.read_text(), rel)
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                for name in {t.rstrip(".") for t in re.findall(r"[\w.]+", node.value)} & names:
                    found.setdefault((rel, name), []).append(node.lineno)
    over = {k: v for k, v in found.items() if len(v) > TRANSITION.get(k, 0)}
    assert not over, "file names spelled outside clipad.deploy.manifest: " + ", ".join(
        f"{f}:{lines} {name!r}" for (f, name), lines in sorted(over.items())
    )
