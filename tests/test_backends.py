"""Backends without a GPU: what can be checked honestly where TensorRT and onnxruntime-gpu are absent.

- the execution providers and options ONNX Runtime is given, built from the artifacts for each
  graph and device (option names checked against ONNX Runtime's own lists), the TensorRT EP's
  caches inside the artifact directory and never in the manifest's files;
- precision auto with ONNX Runtime trusts the session, not get_available_providers(): the real
  (CPU) onnxruntime is told it has the CUDA EP, the FP16 session falls back to the CPU EP, and
  the FP32 graph is served with a note;
- ``--device cpu`` never selects or runs TensorRT, with a plan present in the artifacts: an import
  hook fails the test if anything imports tensorrt, cuda-python or the TensorRT backend module;
- cuda-python version messages, the stream handle through the real cuda-bindings (installed here
  with torch), CUDA error checks with the real error enum;
- the TensorRT engine's I/O and profile checks as pure functions on given tensors;
- close() twice on every backend.

No fake ``tensorrt`` or ``cuda`` module is created anywhere.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.core.progress import Tasks
from clipad.deploy import parity
from clipad.deploy.artifacts import Artifacts, load_artifacts
from clipad.deploy.export import ExportConfig, export
from clipad.deploy.manifest import ARTIFACT_FILES, PLAN, PLAN_META, EngineMeta, Int8Entry
from clipad.deploy.runners import cuda as cudab
from clipad.deploy.runners import onnxruntime as ortb
from clipad.deploy.runners import tensorrt as trtr
from clipad.deploy.runners.tensorrt import EngineTensor, check_engine_io, check_engine_profile
from clipad.model.prompts import PROMPT_SETS
from clipad.runtime.backends import open_backend, select_backend
from clipad.runtime.backends import tensorrt_backend as trtb
from tests.helpers import assert_one_line_error, run

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
ALL_GPU = [TRT, CUDA, CPU]

# Option names ONNX Runtime parses (an unknown one fails the session):
# onnxruntime/core/providers/tensorrt/tensorrt_execution_provider_info.cc, provider_option_names
TRT_OPTION_NAMES = {
    "device_id",
    "has_user_compute_stream",
    "trt_max_partition_iterations",
    "trt_min_subgraph_size",
    "trt_max_workspace_size",
    "trt_fp16_enable",
    "trt_int8_enable",
    "trt_int8_calibration_table_name",
    "trt_int8_use_native_calibration_table",
    "trt_dla_enable",
    "trt_dla_core",
    "trt_dump_subgraphs",
    "trt_engine_cache_enable",
    "trt_engine_cache_path",
    "trt_engine_cache_prefix",
    "trt_engine_decryption_enable",
    "trt_engine_decryption_lib_path",
    "trt_force_sequential_engine_build",
    "trt_context_memory_sharing_enable",
    "trt_layer_norm_fp32_fallback",
    "trt_timing_cache_enable",
    "trt_timing_cache_path",
    "trt_force_timing_cache",
    "trt_detailed_build_log",
    "trt_build_heuristics_enable",
    "trt_sparsity_enable",
    "trt_builder_optimization_level",
    "trt_auxiliary_streams",
    "trt_tactic_sources",
    "trt_extra_plugin_lib_paths",
    "trt_profile_min_shapes",
    "trt_profile_max_shapes",
    "trt_profile_opt_shapes",
    "trt_cuda_graph_enable",
}
# onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc, provider_option_names (those used here)
CUDA_OPTION_NAMES = {
    "device_id",
    "arena_extend_strategy",
    "cudnn_conv_algo_search",
    "do_copy_in_default_stream",
    "use_tf32",
}


def _export(tiny, out: Path, precision: str) -> Artifacts:
    cfg = ExportConfig(category="washer", out=out, prompts=PROMPT_SETS["industrial"], max_batch=4, precision=precision)
    return export(tiny, cfg, Tasks(None))


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny) -> Artifacts:
    """FP32-only artifacts (max batch 4)."""
    return _export(tiny, tmp_path_factory.mktemp("be") / "art", "fp32")


@pytest.fixture(scope="module")
def art16(tmp_path_factory, tiny) -> Artifacts:
    """Artifacts with model.fp16.onnx; its parity limits widened for this export only (random
    weights miss them; which graph is served is what is tested here)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(parity.TOLERANCES, "fp16", {"rel_l2": 1.0, "prob_max_abs": 1.0, "top1pct_agreement": 0.0})
        a = _export(tiny, tmp_path_factory.mktemp("be16") / "art", "fp16")
    assert a.manifest.precisions == ["fp32", "fp16"]
    return a


@pytest.fixture(scope="module")
def with_plan(art, tmp_path_factory) -> Artifacts:
    """A copy of ``art`` where a plan is present: a dummy ``model.plan`` and a valid sidecar, both
    added to the copied manifest with the manifest API (hash-checked like a real plan). Nothing
    may ever load it here: every test using it must refuse before TensorRT is imported."""
    root = tmp_path_factory.mktemp("plan") / "art"
    shutil.copytree(art.root, root)
    (root / PLAN).write_bytes(b"not a TensorRT plan: the backend must refuse before reading it")
    s = art.manifest.image_size
    meta = EngineMeta.create(
        tensorrt="10.13.0.35",
        gpu="NVIDIA H200",
        compute_capability="9.0",
        category="washer",
        input={"name": "image", "dtype": "uint8", "shape": ["batch", s, s, 3]},
        profile={"min": 1, "opt": 4, "max": 4},
        onnx="model.onnx",
        onnx_sha256=art.manifest.files["model.onnx"],
        precision="fp32",
        strongly_typed=True,
        layers={"fp32": 10},
        fp16_layer_fraction=0.0,
        build_s=1.0,
    )
    meta.write(root / PLAN_META)
    copy = load_artifacts(root)
    copy.update(
        copy.manifest.with_engine(meta, {PLAN: file_sha256(root / PLAN), PLAN_META: file_sha256(root / PLAN_META)})
    )
    copy = load_artifacts(root)
    assert copy.has(PLAN) and copy.manifest.engine is not None
    return copy


class _RefuseImports(importlib.abc.MetaPathFinder):
    """An import hook that fails on any import of the named top-level modules (not a stand-in
    for them: it only proves that the code under test never tries)."""

    def __init__(self, *names: str):
        self.names = names
        self.attempts: list[str] = []

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.names or fullname.split(".")[0] in self.names:
            self.attempts.append(fullname)
            raise AssertionError(f"{fullname} was imported although device cpu must never touch TensorRT")
        return None  # not ours: the normal finders go on


@pytest.fixture
def no_tensorrt_imports(monkeypatch):
    """tensorrt, cuda-python and the TensorRT backend module may not be imported (they are
    dropped from sys.modules for the test, so a cached import does not bypass the hook)."""
    for mod in ("tensorrt", "cuda", "clipad.runtime.backends.tensorrt_backend", "clipad.deploy.runners.tensorrt"):
        for name in [m for m in sys.modules if m == mod or m.startswith(mod + ".")]:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr("clipad.runtime.backends.tensorrt_backend", raising=False)
    monkeypatch.delattr("clipad.deploy.runners.tensorrt", raising=False)
    hook = _RefuseImports(
        "tensorrt", "cuda", "clipad.runtime.backends.tensorrt_backend", "clipad.deploy.runners.tensorrt"
    )
    monkeypatch.setattr(sys, "meta_path", [hook, *sys.meta_path])
    yield hook
    assert hook.attempts == []


def _one_line(err: ClipadError, *fragments: str) -> str:
    msg = str(err)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


# -- provider list and options --------------------------------------------------------------------


@pytest.mark.parametrize("available", [[CPU], ["AzureExecutionProvider", CPU], ALL_GPU])
def test_device_cpu_gets_the_cpu_provider_only(art, available):
    assert ortb.provider_config(art, "fp32", "cpu", available) == [(CPU, {})]


def test_auto_orders_tensorrt_cuda_cpu_and_options_are_ort_names(art):
    cfg = ortb.provider_config(
        art, "fp32", "auto", ["AzureExecutionProvider", *ALL_GPU], ort_version="1.32.0", trt_version="10.13.0.35"
    )
    assert [n for n, _ in cfg] == [TRT, CUDA, CPU]
    trt, cuda = cfg[0][1], cfg[1][1]
    assert set(trt) <= TRT_OPTION_NAMES, set(trt) - TRT_OPTION_NAMES
    assert set(cuda) <= CUDA_OPTION_NAMES, set(cuda) - CUDA_OPTION_NAMES
    for opts in (trt, cuda):  # the Python types ONNX Runtime takes: bool as True/False, int, str
        assert all(isinstance(v, (bool, int, str)) for v in opts.values()), opts
    assert cuda == {
        "device_id": 0,
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "do_copy_in_default_stream": True,
        "use_tf32": False,
    }
    assert trt["device_id"] == 0 and trt["trt_max_workspace_size"] == 4 << 30


def test_tensorrt_ep_caches_are_inside_the_artifacts_and_not_in_the_manifest(art):
    trt = dict(ortb.provider_config(art, "fp32", "auto", ALL_GPU, ort_version="1.32.0", trt_version="10.13.0.35"))[TRT]
    assert trt["trt_engine_cache_enable"] is True and trt["trt_timing_cache_enable"] is True
    engine_dir, timing_dir = Path(trt["trt_engine_cache_path"]), Path(trt["trt_timing_cache_path"])
    root = art.root.resolve()
    assert timing_dir.resolve() == root / ortb.ORT_TRT_CACHE
    assert engine_dir.resolve().parent == root / ortb.ORT_TRT_CACHE
    # keyed by the graph's content and both library versions: a changed graph never meets a stale engine
    assert engine_dir.name == f"fp32-{art.manifest.files['model.onnx'][:16]}-ort1.32.0-trt10.13.0.35"
    assert ortb.ORT_TRT_CACHE not in ARTIFACT_FILES
    assert not any(ortb.ORT_TRT_CACHE in name for name in art.manifest.files)


def test_precision_flags_match_the_graph_served(art16):
    m = art16.manifest
    entry = Int8Entry.create(
        min_agreement=0.9, format="QDQ", ops=["Conv"], calibration="minmax", source_sha256="c" * 64
    )
    # a hash only: nothing is read
    int8 = Artifacts(art16.root, m.with_int8("ab" * 32, m.parity.graphs["fp32"], m.parity.tolerances["fp32"], entry))
    flags = {}
    for precision, a in (("fp32", art16), ("fp16", art16), ("int8", int8)):
        trt = dict(ortb.provider_config(a, precision, "auto", ALL_GPU, ort_version="1.32.0", trt_version="10.13"))[TRT]
        flags[precision] = (
            trt["trt_fp16_enable"],
            trt["trt_int8_enable"],
            trt["trt_layer_norm_fp32_fallback"],
            Path(trt["trt_engine_cache_path"]).name,
            trt["trt_timing_cache_path"],
        )
    assert [f[:3] for f in flags.values()] == [(False, False, False), (True, False, True), (False, True, False)]
    assert flags["fp16"][3].startswith(f"fp16-{art16.manifest.files['model.fp16.onnx'][:16]}-")
    assert flags["int8"][3].startswith("int8-abababab")
    assert len({f[3] for f in flags.values()}) == 3  # one engine cache per graph
    assert len({f[4] for f in flags.values()}) == 1  # one shared timing cache


def test_profile_shapes_cover_batch_1_to_max(art):
    s = art.manifest.image_size
    trt = dict(ortb.provider_config(art, "fp32", "auto", ALL_GPU))[TRT]
    # no plan: the default opt batch of `clipad export --engine` (min(8, max batch) = 4 here)
    assert trt["trt_profile_min_shapes"] == f"image:1x{s}x{s}x3"
    assert trt["trt_profile_opt_shapes"] == f"image:4x{s}x{s}x3"
    assert trt["trt_profile_max_shapes"] == f"image:4x{s}x{s}x3"


def test_profile_opt_follows_the_plan_sidecar(with_plan):
    meta = with_plan.manifest.engine.replace(profile={"min": 1, "opt": 2, "max": 4})
    a = Artifacts(with_plan.root, with_plan.manifest.replace(engine=meta))
    s = a.manifest.image_size
    trt = dict(ortb.provider_config(a, "fp32", "auto", ALL_GPU))[TRT]
    assert trt["trt_profile_opt_shapes"] == f"image:2x{s}x{s}x3"


def test_cuda_device_index_and_unknown_devices(art):
    cfg = dict(ortb.provider_config(art, "fp32", "cuda:1", ALL_GPU))
    assert cfg[TRT]["device_id"] == 1 and cfg[CUDA]["device_id"] == 1
    assert [n for n, _ in ortb.provider_config(art, "fp32", "auto", [CUDA, CPU])] == [CUDA, CPU]
    with pytest.raises(ClipadError) as e:
        ortb.provider_config(art, "fp32", "tpu", ALL_GPU)
    _one_line(e.value, "unknown device 'tpu'")


def test_device_cuda_without_a_gpu_provider_is_one_line(art):
    with pytest.raises(ClipadError) as e:
        ortb.provider_config(art, "fp32", "cuda", ["AzureExecutionProvider", CPU])
    _one_line(e.value, "--device cuda", "onnxruntime-gpu")


def test_tensorrt_ep_is_left_out_when_it_cannot_load(art):
    cfg = ortb.provider_config(
        art, "fp32", "auto", ALL_GPU, tensorrt_ep="links TensorRT 10, TensorRT 11.4.0.106 is installed"
    )
    assert [n for n, _ in cfg] == [CUDA, CPU]
    assert [n for n, _ in ortb.provider_config(art, "fp32", "cuda", ALL_GPU, tensorrt_ep="none installed")] == [
        CUDA,
        CPU,
    ]


def _dist(root: Path, name: str, version: str) -> None:
    """An installed distribution's metadata, as pip leaves it in site-packages."""
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.mark.parametrize(
    "dists,version,cuda",
    [
        (
            [
                ("tensorrt_cu13", "10.16.1.11"),
                ("tensorrt_cu13_libs", "10.16.1.11"),
                ("tensorrt_cu13_bindings", "10.16.1.11"),
            ],
            "10.16.1.11",
            13,
        ),
        (
            [
                ("tensorrt", "11.4.0.106"),
                ("tensorrt_cu12_libs", "11.4.0.106"),
                ("tensorrt_cu12_bindings", "11.4.0.106"),
            ],
            "11.4.0.106",
            12,
        ),
        (
            [("tensorrt", "10.3.0"), ("tensorrt_libs", "10.3.0"), ("tensorrt_bindings", "10.3.0")],
            "10.3.0",
            12,
        ),  # before cu13 wheels
    ],
)
def test_installed_tensorrt_from_metadata(tmp_path, monkeypatch, dists, version, cuda):
    from clipad.deploy.tensorrt.install import installed_tensorrt

    if installed_tensorrt() is not None:
        pytest.skip("TensorRT is installed here; these cases need an environment without it")
    for name, v in dists:
        _dist(tmp_path, name, v)
    monkeypatch.syspath_prepend(str(tmp_path))
    found = installed_tensorrt()
    assert (found.version, found.major, found.cuda_major) == (version, int(version.split(".")[0]), cuda)


def test_tensorrt_ep_problem_compares_the_linked_and_installed_majors():
    from clipad.deploy.tensorrt.install import InstalledTensorRT, tensorrt_ep_problem

    trt10, trt11 = (InstalledTensorRT(v, 13, ("tensorrt_cu13_bindings",)) for v in ("10.16.1.11", "11.4.0.106"))
    assert tensorrt_ep_problem(10, trt10) is None
    assert tensorrt_ep_problem(None, trt11) is None  # the library's major unknown: the session tells
    assert tensorrt_ep_problem(10, trt11) == (
        "onnxruntime's TensorRT provider links TensorRT 10, TensorRT 11.4.0.106 is installed"
    )
    assert tensorrt_ep_problem(10, None) == "onnxruntime's TensorRT provider needs TensorRT 10, and none is installed"


def test_linked_libraries_equal_readelf():
    """The DT_NEEDED reader against binutils' readelf on ONNX Runtime's own extension module."""
    import onnxruntime

    from clipad.deploy.tensorrt.install import linked_libraries, linked_tensorrt_major, onnxruntime_tensorrt_ep_library

    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("binutils' readelf is not installed: no independent reading to compare with")
    lib = next((Path(onnxruntime.__file__).parent / "capi").glob("onnxruntime_pybind11_state*.so"))
    out = subprocess.run([readelf, "-d", str(lib)], capture_output=True, text=True, check=True).stdout
    expected = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)
    assert expected and linked_libraries(lib) == expected
    assert linked_tensorrt_major(lib) is None  # links no TensorRT
    assert linked_libraries(Path(onnxruntime.__file__)) == []  # not ELF
    if "onnxruntime-gpu" not in {d.metadata["Name"] for d in importlib.metadata.distributions()}:
        assert onnxruntime_tensorrt_ep_library() is None  # the CPU wheel has no TensorRT provider


def test_cache_directories_are_created_lazily_and_leave_the_artifacts_valid(art, tmp_path):
    root = tmp_path / "art"
    shutil.copytree(art.root, root)
    a = load_artifacts(root)
    assert not (root / ortb.ORT_TRT_CACHE).exists()
    # opening the backend here (no GPU provider) creates nothing
    open_backend(a, "onnxruntime", "fp32", "auto").close()
    assert not (root / ortb.ORT_TRT_CACHE).exists()
    # with the TensorRT EP asked for, the directories are made and nothing else changes
    wanted, note = ortb._prepare_caches(ortb.provider_config(a, "fp32", "auto", ALL_GPU))
    assert note is None
    engine_dir = Path(dict(wanted)[TRT]["trt_engine_cache_path"])
    assert engine_dir.is_dir() and engine_dir.is_relative_to(root)
    (engine_dir / "TensorrtExecutionProvider_TRTKernel_graph_1.engine").write_bytes(b"cached engine")
    b = load_artifacts(root)
    assert b.manifest == a.manifest
    for name in b.manifest.files:
        b.verified_path(name)  # every listed file still matches its sha256
    with open_backend(b, "onnxruntime", "fp32", "cpu") as be:
        be(np.zeros((1, b.manifest.image_size, b.manifest.image_size, 3), np.uint8))


def test_unwritable_cache_serves_without_caches_and_says_so(art, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory would go")
    opts = dict(ortb.tensorrt_ep_options(art, "fp32"))
    opts.update(trt_engine_cache_path=str(blocker / "engines"), trt_timing_cache_path=str(blocker))
    wanted, note = ortb._prepare_caches([(TRT, opts), (CPU, {})])
    trt = dict(wanted)[TRT]
    assert trt["trt_engine_cache_enable"] is False and trt["trt_timing_cache_enable"] is False
    assert "trt_engine_cache_path" not in trt and "trt_timing_cache_path" not in trt
    assert note and "\n" not in note and "engine cache" in note


# -- precision auto trusts the session --------------------------------------------------------------


def test_auto_precision_without_a_gpu_provider_is_fp32_on_the_cpu(art16):
    import onnxruntime as ort

    if any(p in ort.get_available_providers() for p in (TRT, CUDA)):
        pytest.skip("a GPU execution provider is installed here")
    with select_backend(art16, "onnxruntime", "auto", "auto") as be:
        assert be.describe() == "onnxruntime fp32 (CPUExecutionProvider)" and be.notes == ()


def test_auto_precision_falls_back_to_fp32_when_the_gpu_provider_does_not_load(art16, monkeypatch):
    """The wheel says it has the CUDA EP (as onnxruntime-gpu does without usable CUDA libraries);
    the real session then runs on the CPU EP: FP16 must not be served there."""
    import onnxruntime as ort

    if any(p in ort.get_available_providers() for p in (TRT, CUDA)):
        pytest.skip("a GPU execution provider is installed here: the fallback cannot be provoked")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime warns that the CUDA EP is not available
        be = select_backend(art16, "onnxruntime", "auto", "auto")
    with be:
        assert be.info().precision == "fp32" and be.info().device == "cpu"
        assert len(be.notes) == 1 and "FP32" in be.notes[0] and "CPUExecutionProvider" in be.notes[0]
    # explicit fp16 is served as asked (the user's choice), also on the CPU
    with select_backend(art16, "onnxruntime", "cpu", "fp16") as be:
        assert be.describe() == "onnxruntime fp16 (CPUExecutionProvider)"


def test_auto_precision_skips_an_fp16_graph_that_failed_its_quality_gate(art16, tmp_path, monkeypatch):
    """Even where a GPU provider is listed, a failed AUROC gate (`export --gate-data`) keeps auto on FP32."""
    import shutil

    import onnxruntime as ort

    from clipad.deploy.manifest import Manifest, ParityFigures, QualityGate

    root = tmp_path / "gated"
    shutil.copytree(art16.root, root)
    m = Manifest.read(root / "manifest.json")
    agreement = ParityFigures.create(
        max_abs=0.1, rel_l2=0.1, prob_max_abs=0.1, top1pct_agreement=0.5, against="onnxruntime fp32"
    )
    gate = QualityGate.create(
        n_images=10,
        n_anomalous=5,
        pixel_auroc_fp32=0.9,
        pixel_auroc=0.8,
        image_auroc_fp32=0.9,
        image_auroc=0.9,
        pixel_drop_points=10.0,
        image_drop_points=0.0,
        max_drop_points=0.5,
        agreement=agreement,
        passed=False,
    )
    m.replace(parity=m.parity.replace(gates={"fp16": gate})).write(root / "manifest.json")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime warns that the CUDA EP is not available
        be = select_backend(load_artifacts(root), "onnxruntime", "auto", "auto")
    with be:
        assert be.info().precision == "fp32"
        assert len(be.notes) == 1 and "quality gate" in be.notes[0] and "10.00" in be.notes[0]


def test_device_cuda_when_the_gpu_provider_does_not_load_is_one_line(art, monkeypatch):
    import onnxruntime as ort

    if any(p in ort.get_available_providers() for p in (TRT, CUDA)):
        pytest.skip("a GPU execution provider is installed here")
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with pytest.raises(ClipadError) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxruntime warns that the CUDA EP is not available
        open_backend(art, "onnxruntime", "fp32", "cuda")
    _one_line(e.value, "--device cuda", "CPUExecutionProvider")


# -- --device cpu never selects or runs TensorRT ------------------------------------------------------


def test_tensorrt_backend_with_device_cpu_is_refused_before_tensorrt(with_plan, no_tensorrt_imports):
    with pytest.raises(ClipadError) as e:
        open_backend(with_plan, "tensorrt", None, "cpu")
    _one_line(e.value, "--device cpu", "GPU")
    with pytest.raises(ClipadError) as e:
        select_backend(with_plan, "tensorrt", "cpu", "auto")
    _one_line(e.value, "--device cpu")


def test_auto_with_device_cpu_skips_tensorrt_and_gpu_providers(with_plan, no_tensorrt_imports):
    for precision in ("auto", "fp32"):
        with select_backend(with_plan, "auto", "cpu", precision) as be:
            assert be.describe() == "onnxruntime fp32 (CPUExecutionProvider)"
            assert be.providers == [CPU]


def test_cli_device_cpu_with_a_plan(with_plan, tmp_path, capsys, no_tensorrt_imports):
    from PIL import Image

    from clipad.data.synth import sample_images

    (tmp_path / "imgs").mkdir()
    for i, im in enumerate(sample_images(2, width=64, height=48, seed=1)):
        Image.fromarray(im).save(tmp_path / "imgs" / f"{i}.png")
    code, _, err = run(
        capsys,
        "predict",
        tmp_path / "imgs",
        "--artifacts",
        with_plan.root,
        "--backend",
        "tensorrt",
        "--device",
        "cpu",
        "--out",
        tmp_path / "p",
    )
    assert_one_line_error(code, err, "--device cpu")
    code, _, err = run(
        capsys,
        "predict",
        tmp_path / "imgs",
        "--artifacts",
        with_plan.root,
        "--backend",
        "auto",
        "--device",
        "cpu",
        "--out",
        tmp_path / "q",
        "--quiet",
    )
    assert code == 0, err
    assert "backend: onnxruntime fp32 (CPUExecutionProvider)" in err


def test_bench_with_device_cpu_never_opens_tensorrt(with_plan, no_tensorrt_imports):
    from clipad.runtime.bench.config import BenchConfig
    from clipad.runtime.bench.rows import RowContext, bench_combination
    from clipad.runtime.bench.timing import HostMemory

    cfg = BenchConfig(
        backends=["tensorrt"], precisions=["fp32"], batches=[1], iterations=1, warmup=0, device="cpu", parity=False
    )
    s = with_plan.manifest.image_size
    ctx = RowContext(cfg, np.zeros((1, s, s, 3), np.uint8), HostMemory(), 1, {}, None, lambda n: None)
    (row,) = bench_combination(with_plan, "tensorrt", "fp32", ctx)
    assert row.status == "unavailable" and "--device cpu" in row.reason


def test_tensorrt_backend_itself_refuses_device_cpu(with_plan, no_tensorrt_imports, monkeypatch):
    # the backend class is imported here on purpose, after the hook: allow it (but still not tensorrt/cuda)
    no_tensorrt_imports.names = ("tensorrt", "cuda")
    from clipad.runtime.backends.tensorrt_backend import TensorRTBackend

    with pytest.raises(ClipadError) as e:
        TensorRTBackend(with_plan, None, "cpu")
    _one_line(e.value, "--device cpu")
    with pytest.raises(ClipadError) as e:
        TensorRTBackend(with_plan, None, "cuda:1")
    _one_line(e.value, "GPU 0")


# -- cuda-python ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "installed, legacy, expected",
    [
        ("12.4.0", True, "cuda-python 12.4.0 is too old"),
        ("12.6.0", False, "cuda-python 12.6.0 is too old"),
        (None, True, "too old"),  # no metadata, but the pre-12.6.1 layout (cuda.cudart) is there
        ("12.6.2.post1", False, "does not import"),
        ("13.0.1", False, "does not import"),
        (None, False, "not installed"),
    ],
)
def test_cuda_python_messages(installed, legacy, expected):
    msg = cudab.cuda_python_problem("No module named 'cuda.bindings'", installed, legacy)
    assert expected in msg and "\n" not in msg
    assert "cuda-python>=13,<14" in msg  # the CUDA major of clipad[gpu]
    if "too old" in expected:
        assert "not installed" not in msg and "12.6.1" in msg
    # with a CUDA 12 TensorRT installed, the requirement named is cuda-python 12 from 12.6.1
    assert "cuda-python>=12.6.1,<13" in cudab.cuda_python_problem("x", installed, legacy, cuda_major=12)


@pytest.mark.parametrize(
    "trt,cuda_python,driver,expected",
    [
        (("10.16.1.11", 13), "13.4.4", "13.0", None),
        (
            ("10.16.1.11", 13),
            "12.9.4",
            "13.0",
            "is a CUDA 13 build but cuda-python 12.9.4 binds CUDA 12: pip install 'cuda-python>=13,<14'",
        ),
        (
            ("10.16.1.11", 13),
            "13.4.4",
            "12.8",
            "needs a driver for CUDA 13 (R580 or newer); this driver supports CUDA 12.8",
        ),
        (None, "13.4.4", "12.8", "cuda-python 13.4.4 needs a driver for CUDA 13 (R580 or newer)"),
        (("10.3.0", 12), "12.6.2", "12.4", None),
        (("10.16.1.11", 13), "13.4.4", None, None),  # no driver: nothing to compare (the GPU check says so)
    ],
)
def test_cuda_majors_of_tensorrt_cuda_python_and_driver(trt, cuda_python, driver, expected):
    from clipad.deploy.tensorrt.install import InstalledTensorRT, cuda_mismatch

    installed = InstalledTensorRT(trt[0], trt[1], ("tensorrt",)) if trt else None
    msg = cuda_mismatch(installed, cuda_python, driver)
    assert msg is None if expected is None else (expected in msg and "\n" not in msg), msg


def test_driver_cuda_version_without_a_driver():
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("an NVIDIA driver is loaded here; this checks the no-driver answer")
    assert cudab.driver_cuda(cudab.cuda_runtime()) is None  # no NVIDIA driver on this machine: (cudaSuccess, 0)


def test_version_tuple():
    assert cudab._version_tuple("12.6.2.post1") == (12, 6, 2)
    assert cudab._version_tuple("13.0.0rc1") == (13, 0, 0)
    assert cudab._version_tuple("12.6.1") == cudab.CUDA_PYTHON_MIN > cudab._version_tuple("12.6.0")


def _real_cudart():
    try:
        from cuda.bindings import runtime
    except ImportError:
        pytest.skip("cuda-bindings (cuda-python >= 12.6.1) is not installed here")
    return runtime


def test_cuda_runtime_imports_the_real_bindings():
    rt = _real_cudart()
    assert cudab.cuda_runtime() is rt


def test_stream_handle_is_the_native_handle():
    rt = _real_cudart()
    stream = rt.cudaStream_t(0x5A5A00)  # a handle value; no CUDA call is made
    assert cudab.stream_handle(stream) == 0x5A5A00
    assert stream.getPtr() != 0x5A5A00  # getPtr() is where the wrapper keeps the handle, not the handle


def test_stream_handle_without_cuda_bindings_utils(monkeypatch):
    """cuda-bindings before 12.9.1 has no cuda.bindings.utils: int(stream) is the accessor there."""
    rt = _real_cudart()
    monkeypatch.setitem(sys.modules, "cuda.bindings.utils", None)  # its import now fails, as on 12.6.1-12.9.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert cudab.stream_handle(rt.cudaStream_t(0x5A5A00)) == 0x5A5A00


def test_cuda_errors_are_one_line_with_the_real_error_enum():
    rt = _real_cudart()
    assert cudab.check_cuda((rt.cudaError_t.cudaSuccess, 7)) == 7
    assert cudab.check_cuda((rt.cudaError_t.cudaSuccess,)) == []
    with pytest.raises(ClipadError) as e:
        cudab.check_cuda((rt.cudaError_t.cudaErrorMemoryAllocation, None))
    _one_line(e.value, "cudaErrorMemoryAllocation")


# -- the TensorRT engine's I/O and profile, as pure functions ---------------------------------------------


def _good(s: int) -> list[EngineTensor]:
    return [
        EngineTensor("image", "input", "uint8", (-1, s, s, 3)),
        EngineTensor("anomaly_map", "output", "float32", (-1, s, s)),
        EngineTensor("image_prob", "output", "float32", (-1,)),
    ]


def test_engine_io_matching_the_manifest_passes(art):
    check_engine_io(_good(art.manifest.image_size), art.manifest.onnx)
    check_engine_io(list(reversed(_good(art.manifest.image_size))), art.manifest.onnx)  # order does not matter


@pytest.mark.parametrize(
    "change, fragments",
    [
        (
            lambda t: [t[0], EngineTensor("anomaly_map", "output", "float16", t[1].shape), t[2]],
            ["output 'anomaly_map' is float16 in the engine, float32 in the manifest"],
        ),
        (lambda t: [EngineTensor("images", "input", "uint8", t[0].shape), t[1], t[2]], ["no input 'image'", "images"]),
        (lambda t: [t[0], t[1]], ["no output 'image_prob'"]),
        (lambda t: [*t, EngineTensor("features", "output", "float32", (-1, 64))], ["output 'features'"]),
        (
            lambda t: [EngineTensor("image", "input", "uint8", (4, *t[0].shape[1:])), t[1], t[2]],
            ["input 'image' has shape [4,", "[batch,"],
        ),
        (
            lambda t: [EngineTensor("image", "input", "uint8", (-1, 240, 240, 3)), t[1], t[2]],
            ["[dynamic, 240, 240, 3]"],
        ),
        (
            lambda t: [EngineTensor("image", "input", "float32", t[0].shape), t[1], t[2]],
            ["is float32 in the engine, uint8"],
        ),
        (
            lambda t: [t[0], t[1], EngineTensor("image_prob", "output", "float32", (-1, 1))],
            ["output 'image_prob' has shape"],
        ),
    ],
)
def test_engine_io_differences_are_one_line_naming_them(art, change, fragments):
    with pytest.raises(ClipadError) as e:
        check_engine_io(change(_good(art.manifest.image_size)), art.manifest.onnx)
    _one_line(e.value, "model.plan does not match the exported graph", "clipad export --engine", *fragments)


def test_a_plan_that_did_not_load_is_one_line():
    with pytest.raises(ClipadError) as e:
        trtr.read_engine_io(None)
    _one_line(e.value, "could not load model.plan", "clipad export --engine")


def test_dims_of_no_tensor():
    class NoTensor:  # TensorRT's Dims{-1, {}}: nbDims -1, which len() refuses
        def __len__(self):
            return -1

    assert trtr.dims(NoTensor()) is None
    assert trtr.dims((-1, 96, 96, 3)) == (-1, 96, 96, 3)


def test_engine_profile_against_the_sidecar(with_plan):
    meta = with_plan.manifest.engine
    s = with_plan.manifest.image_size
    profile = [(1, s, s, 3), (4, s, s, 3), (4, s, s, 3)]
    assert check_engine_profile("image", profile, meta) == 4
    with pytest.raises(ClipadError) as e:
        check_engine_profile("image", [(1, s, s, 3), (1, s, s, 3), (8, s, s, 3)], meta)
    _one_line(e.value, "1/1/8", "1/4/4", "model.plan.json")
    with pytest.raises(ClipadError) as e:
        check_engine_profile("image", [None, None, None], meta)
    _one_line(e.value, "no optimisation profile")


# -- close() ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["onnxruntime", "torch"])
def test_close_twice(art, name):
    be = open_backend(art, name, "fp32", "cpu")
    x = np.zeros((2, art.manifest.image_size, art.manifest.image_size, 3), np.uint8)
    be(x)
    be.close()
    be.close()
    with pytest.raises(ClipadError) as e:
        be(x)
    _one_line(e.value, "closed")


def test_close_of_a_tensorrt_backend_that_never_opened_does_nothing():
    be = trtb.TensorRTBackend.__new__(trtb.TensorRTBackend)  # as after a failed __init__: nothing acquired
    be.close()
    be.close()
    assert be.runner is None
    runner = trtr.TensorRTRunner.__new__(trtr.TensorRTRunner)  # as after a failed __init__: nothing acquired
    runner.close()
    runner.close()
    assert runner.buffers == {} and runner.stream is None and runner.context is None and runner.engine is None
    buf = cudab.DeviceBuffer.__new__(cudab.DeviceBuffer)
    buf.device = buf.host_ptr = buf.host = None
    buf.free()
    buf.free()


def test_unknown_backend_names_every_choice(art):
    with pytest.raises(ClipadError) as e:
        select_backend(art, "tflite", "cpu")
    _one_line(e.value, "--backend must be one of auto, torch, onnxruntime, tensorrt, triton, openvino, got 'tflite'")


# -- the runner under the backends, and the precision table ----------------------------------------


def test_onnxruntime_runner_is_the_backends_session(art):
    """Export parity and INT8 run graphs through the runner the backend wraps: same providers for
    device cpu, same outputs, any batch size; a closed runner says so in one line."""
    from clipad.deploy.manifest import ONNX_FP32

    x = parity.parity_images(art.geometry, 5)
    with open_backend(art, "onnxruntime", "fp32", "cpu") as be, ortb.OnnxRuntimeRunner(art.root / ONNX_FP32) as r:
        assert r.providers == be.providers == [CPU] and r.max_batch == 1
        want = be(x)
        for batch in (None, 2, 5):
            got = r.run(x, batch)
            assert got[0].dtype == got[1].dtype == np.float32 and got[0].shape == want[0].shape
            np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(ClipadError) as e:
        r.infer(x[:1])
    _one_line(e.value, "closed")


@pytest.mark.parametrize(("name", "precision"), [("torch", "int8"), ("onnxruntime", "bf16"), ("tensorrt", "bf16")])
def test_a_precision_the_backend_does_not_serve_is_one_line(art, name, precision):
    from clipad.core.choices import SERVES

    with pytest.raises(ClipadError) as e:
        open_backend(art, name, precision, "cpu")
    _one_line(e.value, f"--precision of the {name} backend must be one of {', '.join(SERVES[name])}, got '{precision}'")
