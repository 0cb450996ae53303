"""`clipad doctor`: every branch that can run on this CPU machine runs for real (the doctor on
this environment; a torch that does not import, a half-installed TensorRT, both ONNX Runtime
wheels, a probe that crashes or hangs, a cached default weight file), each made by putting broken
or extra packages in front of the real ones on PYTHONPATH, which every probe process inherits.
What cannot exist here, a GPU with its driver, TensorRT and onnxruntime-gpu, is judged from the
records such a machine's probes would give (the verdicts are pure functions of them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clipad.runtime.doctor import verdicts as V
from clipad.runtime.doctor.facts import (
    CHECKS,
    CudaFacts,
    Findings,
    GpuFacts,
    OnnxRuntimeFacts,
    ProbeFailure,
    TensorRTFacts,
    TorchFacts,
    from_json,
    to_json,
)
from clipad.runtime.doctor.report import run_doctor
from tests.helpers import assert_one_line_error, run

ROOT = Path(__file__).resolve().parents[1]
NO_DRIVER = not Path("/proc/driver/nvidia/version").exists()


def doctor(*args: str, pythonpath: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """`clipad doctor ARGS` in a new process (so that PYTHONPATH reaches it and every probe)."""
    e = {**os.environ, **(env or {})}
    if pythonpath is not None:
        e["PYTHONPATH"] = os.pathsep.join([str(pythonpath), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run(
        [sys.executable, "-m", "clipad", "doctor", *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=300,
        check=False,
    )


def _package(root: Path, name: str, code: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text(textwrap.dedent(code))


def _dist(root: Path, name: str, version: str) -> None:
    info = root / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


# -- this machine ---------------------------------------------------------------------------------------------


def test_doctor_here_names_every_backend_and_why_not(capsys):
    code, out, err = run(capsys, "doctor")
    assert code == 0, err
    for check in CHECKS:
        assert f"\n  {check} " in out, out
    assert "onnxruntime  yes  onnxruntime" in out and "CPUExecutionProvider" in out
    assert "tensorrt     NO   TensorRT is not installed: pip install --extra-index-url https://pypi.nvidia.com" in out
    assert "torch        ?    torch" in out and "not imported" in out  # torch is only imported when asked
    if NO_DRIVER:
        assert "cuda         NO   no NVIDIA driver (cudaErrorInsufficientDriver)" in out
    assert "--backend auto uses: ONNX Runtime on CPU" in out
    assert "matrix features:" in out and "Weights      ViT-B-16-plus-240 laion400m_e31" in out


def test_require_passes_and_fails_in_one_line(capsys):
    code, _, err = run(capsys, "doctor", "--require", "onnxruntime")
    assert code == 0, err
    code, out, err = run(capsys, "doctor", "--require", "tensorrt")
    assert_one_line_error(code, err, "tensorrt cannot be used here: TensorRT is not installed")
    assert "Backends" in out  # the report is still printed
    code, _, err = run(capsys, "doctor", "--require", "onnxruntime,gpu")
    assert_one_line_error(code, err, "--require takes torch, onnxruntime, openvino, tensorrt, triton, cuda; got gpu")


def test_json_report_holds_every_probe(capsys):
    code, out, err = run(capsys, "doctor", "--json", "--require", "torch")
    assert code == 0, err  # --require torch imports it: torch imports here
    data = json.loads(out)
    assert set(data["facts"]) == {
        "python",
        "cpu",
        "torch",
        "onnxruntime",
        "tensorrt",
        "cuda",
        "openvino",
        "triton",
        "chromium",
        "station",
        "genicam",
        "weights",
    }
    assert data["checks"]["torch"]["usable"] is True and data["facts"]["torch"]["imported"] is True
    assert data["facts"]["onnxruntime"]["wheels"] == {"onnxruntime": data["facts"]["onnxruntime"]["version"]}
    for name, facts in data["facts"].items():  # every record reads back as its type
        assert to_json(from_json(name, facts)) == facts


def test_doctor_imports_nothing_heavy():
    code = (
        "import sys, clipad.cli, clipad.runtime.doctor.report; "
        "heavy = ('torch', 'onnxruntime', 'openvino', 'tensorrt', 'numpy', 'onnx'); "
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- broken environments, made real with packages in front of the installed ones ------------------------------


def test_the_station_libraries_are_reported_and_one_that_does_not_import_is_a_finding(tmp_path):
    from importlib.metadata import version

    _package(tmp_path, "asyncua", "raise ImportError('cannot import name ua from partially initialized module')\n")
    res = doctor(pythonpath=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = {line.split()[0]: line for line in res.stdout.splitlines() if line.startswith("  ")}
    assert f"paho-mqtt {version('paho-mqtt')}: results and triggers over MQTT" in lines["MQTT"]
    assert f"asyncua {version('asyncua')}, but it does not import: ImportError: cannot import name ua" in lines["OPC"]
    assert f"prometheus-client {version('prometheus-client')}: the station's /metrics" in lines["Metrics"]


def test_a_torch_that_does_not_import_is_a_finding(tmp_path):
    _package(tmp_path, "torch", "raise ImportError('libtorch_cuda.so: cannot open shared object file')\n")
    res = doctor("--deep", pythonpath=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "torch        NO   torch" in res.stdout and "does not import: ImportError: libtorch_cuda.so" in res.stdout
    assert "onnxruntime  yes" in res.stdout  # the other probes are unaffected
    res = doctor("--require", "torch", pythonpath=tmp_path)
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("error: torch cannot be used here")


def test_a_half_installed_tensorrt_is_a_finding(tmp_path):
    # The bindings wheel without its libraries: the module is there, its shared libraries are not.
    _dist(tmp_path, "tensorrt_cu13_bindings", "10.16.1.11")
    _package(
        tmp_path, "tensorrt", "raise ImportError('libnvinfer.so.10: cannot open shared object file: No such file')\n"
    )
    res = doctor("--json", pythonpath=tmp_path)
    data = json.loads(res.stdout)
    trt = data["facts"]["tensorrt"]
    assert (trt["version"], trt["cuda_major"]) == ("10.16.1.11", 13)
    assert data["checks"]["tensorrt"]["usable"] is False
    assert "tensorrt does not import (ImportError: libnvinfer.so.10" in data["checks"]["tensorrt"]["detail"]


def test_both_onnxruntime_wheels_are_warned_about(tmp_path):
    _dist(tmp_path, "onnxruntime_gpu", "1.31.1")  # what `pip install clipad[gpu]` over a CPU install used to leave
    res = doctor(pythonpath=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Warnings" in res.stdout
    assert "onnxruntime and onnxruntime-gpu are installed together" in res.stdout
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in res.stdout


def test_a_probe_that_crashes_or_hangs_is_a_finding(tmp_path):
    _package(tmp_path, "openvino", "import os\nos.abort()\n")
    res = doctor("--require", "openvino", pythonpath=tmp_path)
    assert "openvino     NO   its probe failed: its process exited with -6" in res.stdout
    assert res.returncode == 1 and "error: openvino cannot be used here" in res.stderr
    hang = tmp_path / "hang"
    _package(hang, "openvino", "import time\ntime.sleep(60)\n")
    old = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(hang), old]).rstrip(os.pathsep)
    try:
        report = run_doctor(timeout=15)  # the other probes answer in about 1 s here
    finally:
        os.environ["PYTHONPATH"] = old
    assert isinstance(report.findings.openvino, ProbeFailure)
    assert report.verdict("openvino").detail == "its probe failed: no answer within 15 s"
    assert report.verdict("onnxruntime").usable is True


def test_cached_default_weights_are_found(tmp_path):
    from clipad.core.weights import DEFAULT_HF_HUB

    # the Hugging Face cache layout: models--ORG--NAME/{refs/main, snapshots/REV/FILE}
    repo = tmp_path / "hub" / f"models--{DEFAULT_HF_HUB.rstrip('/').replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    weights = repo / "snapshots" / "0123abcd" / "open_clip_model.safetensors"
    weights.write_bytes(b"weights")
    res = doctor("--json", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    facts = json.loads(res.stdout)["facts"]["weights"]
    assert facts["cached_file"] == str(weights) and facts["cache_dir"] == str(tmp_path / "hub")


def test_cached_dinov2_weights_are_found(tmp_path):
    """AnomalyDINO's backbones: the official checkpoint in the torch.hub cache ($TORCH_HOME) and
    timm's file in the Hugging Face cache, each reported by name; the text report says so."""
    from clipad.core.weights import DINOV2_HF_TAG, DINOV2_TIMM

    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    official = tmp_path / "torch" / "hub" / "checkpoints" / "dinov2_vitb14_pretrain.pth"
    official.write_bytes(b"weights")
    repo = tmp_path / "hf" / f"models--timm--{DINOV2_TIMM['dinov2_vits14']}.{DINOV2_HF_TAG}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "snapshots" / "0123abcd" / "model.safetensors").write_bytes(b"weights")
    env = {"HF_HUB_CACHE": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")}
    facts = json.loads(doctor("--json", env=env).stdout)["facts"]["weights"]
    assert facts["dinov2"] == {
        "dinov2_vits14": str(repo / "snapshots" / "0123abcd" / "model.safetensors"),
        "dinov2_vitb14": str(official),
    }
    assert "DINOv2 for --method anomalydino: dinov2_vits14 (" in doctor(env=env).stdout
    empty = {"HF_HUB_CACHE": str(tmp_path / "none"), "TORCH_HOME": str(tmp_path / "none")}
    assert "DINOv2 for --method anomalydino: none cached (give --weights FILE)" in doctor(env=empty).stdout


def test_default_weights_hub_entry_is_open_clips():
    import open_clip

    from clipad.core.weights import DEFAULT_HF_HUB, DEFAULT_MODEL, DEFAULT_PRETRAINED

    assert open_clip.get_pretrained_cfg(DEFAULT_MODEL, DEFAULT_PRETRAINED)["hf_hub"] == DEFAULT_HF_HUB


# -- a GPU workstation, from the records its probes would give ------------------------------------------------

H100 = GpuFacts("NVIDIA H100 80GB HBM3", "9.0", 79.1)
CUDA13 = CudaFacts("13.4.4", driver_cuda="13.0", gpus=[H100])
TRT10 = TensorRTFacts("10.16.1.11", 13, ["tensorrt_cu13_bindings", "tensorrt_cu13_libs", "tensorrt_cu13"], "10.16.1.11")
ORT_GPU = OnnxRuntimeFacts(
    {"onnxruntime-gpu": "1.31.1"},
    "1.31.1",
    providers=["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    cuda_build="13.0",
    tensorrt_ep_links=10,
    gpu_session=["CUDAExecutionProvider", "CPUExecutionProvider"],
)


def _facts(**over) -> Findings:
    base = {"torch": TorchFacts("2.14.1", "13.0"), "onnxruntime": ORT_GPU, "tensorrt": TRT10, "cuda": CUDA13}
    return Findings(**{**base, **over})


def _verdict(facts: Findings, check: str) -> V.Verdict:
    return next(v for v in V.verdicts(facts) if v.check == check)


def test_gpu_workstation_as_installed_by_the_gpu_extra():
    facts = _facts()
    trt = _verdict(facts, "tensorrt")
    assert trt.usable and trt.detail == (
        "TensorRT 10.16.1.11 with cuda-python 13.4.4 on NVIDIA H100 80GB HBM3 (compute capability 9.0, 79.1 GiB)"
    )
    ort = _verdict(facts, "onnxruntime")
    assert ort.usable and "CUDA (CUDAExecutionProvider) and CPU; TensorRT provider: offered first" in ort.detail
    assert _verdict(facts, "cuda").detail.endswith("the driver supports CUDA 13.0")
    assert V.warnings(facts) == []
    assert V.auto_choice(V.verdicts(facts)).startswith(
        "TensorRT for artifacts with an engine built here, else ONNX Runtime on CUDA"
    )


def test_tensorrt_11_beside_an_execution_provider_for_10():
    trt11 = TensorRTFacts("11.4.0.106", 13, ["tensorrt_cu13_bindings"], "11.4.0.106")
    facts = _facts(tensorrt=trt11)
    assert _verdict(facts, "tensorrt").usable  # clipad's own engine path takes 11
    assert (
        "TensorRT provider: onnxruntime's TensorRT provider links TensorRT 10, TensorRT 11.4.0.106 is installed"
        in _verdict(facts, "onnxruntime").detail
    )
    assert V.warnings(facts) == [
        "onnxruntime's TensorRT provider links TensorRT 10, TensorRT 11.4.0.106 is installed: "
        "`--backend onnxruntime` serves on its CUDA provider"
    ]


def test_old_driver_and_mismatched_cuda_python_in_one_line():
    old_driver = _facts(cuda=CudaFacts("13.4.4", driver_cuda="12.8", gpus=[H100]))
    trt = _verdict(old_driver, "tensorrt")
    assert not trt.usable and "needs a driver for CUDA 13 (R580 or newer); this driver supports CUDA 12.8" in trt.detail
    assert any(
        w.startswith("torch 2.14.1 is a CUDA 13.0 build, the driver supports CUDA 12.8") for w in V.warnings(old_driver)
    )
    assert any(w.startswith("onnxruntime-gpu is a CUDA 13.0 build") for w in V.warnings(old_driver))
    cp12 = _verdict(_facts(cuda=CudaFacts("12.9.4", driver_cuda="13.0", gpus=[H100])), "tensorrt")
    assert not cp12.usable and cp12.detail.endswith("binds CUDA 12: pip install 'cuda-python>=13,<14'")


def test_a_gpu_provider_that_does_not_load_and_no_gpu():
    fell_back = OnnxRuntimeFacts(
        {"onnxruntime-gpu": "1.31.1"},
        "1.31.1",
        providers=ORT_GPU.providers,
        cuda_build="13.0",
        gpu_session=["CPUExecutionProvider"],
    )
    assert _verdict(_facts(onnxruntime=fell_back), "onnxruntime").detail.endswith(
        "CPU only: its CUDA provider does not load (the session fell back to CPUExecutionProvider)"
    )
    no_gpu = _facts(cuda=CudaFacts("13.4.4", device_error="cudaErrorInsufficientDriver"))
    assert _verdict(no_gpu, "tensorrt").detail == (
        "TensorRT 10.16.1.11 is installed but there is no NVIDIA driver (cudaErrorInsufficientDriver)"
    )
    assert _verdict(
        _facts(
            torch=TorchFacts("2.14.1", "13.0", True, cuda_available=True, gpu="NVIDIA L4"),
            cuda=CudaFacts(None, import_error="ModuleNotFoundError: No module named 'cuda'"),
        ),
        "cuda",
    ).usable


@pytest.mark.parametrize("check", CHECKS)
def test_a_failed_probe_is_a_verdict(check):
    v = _verdict(Findings(**{check: ProbeFailure(check, "no answer within 60 s")}), check)
    assert v.usable is False and v.detail == "its probe failed: no answer within 60 s"


def test_a_command_without_onnxruntime_says_which_install_brings_it(tmp_path):
    # An install with neither extra: `import onnxruntime` finds nothing (made real by a package
    # in front of the installed one that fails as a missing module does).
    _package(
        tmp_path, "onnxruntime", "raise ModuleNotFoundError(\"No module named 'onnxruntime'\", name='onnxruntime')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipad",
            "export",
            "--category",
            "x",
            "--model",
            "clipad-tiny",
            "--random-weights",
            "--out",
            str(tmp_path / "art"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.returncode == 1 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert errors[0].startswith("error: onnxruntime is not installed: pip install 'clipad[cpu]'"), errors[0]
    assert not (tmp_path / "art").exists()
    res = doctor("--require", "onnxruntime", pythonpath=tmp_path)
    assert res.returncode == 1 and "onnxruntime  NO   onnxruntime does not import" in res.stdout


@pytest.mark.slow
def test_tensorrt_check_dry_run_records_the_doctor(tmp_path):
    """The GPU owner's one command, as far as it runs without TensorRT: the doctor's report first,
    every step ok or skipped with the doctor's reason, one report (engine tests not nested here)."""
    out = tmp_path / "trt_check"
    res = subprocess.run(
        # the tiny model only: the steps and the report are the same for ViT-B, at minutes more
        [sys.executable, "scripts/tensorrt_check.py", "--out", str(out), "--dry-run", "--skip-tests"]
        + ["--models", "clipad-tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads((out / "tensorrt_check.json").read_text())
    assert data["steps"][0]["step"] == "clipad doctor --json --deep" and data["steps"][0]["status"] == "ok"
    assert data["doctor"]["checks"]["onnxruntime"]["usable"] is True
    assert data["doctor"]["facts"]["torch"]["imported"] is True
    reason = data["doctor"]["checks"]["tensorrt"]["detail"]
    skipped = [s for s in data["steps"] if s["status"].startswith("skipped")]
    assert skipped and all(s["status"] == "skipped: --skip-tests" or reason in s["status"] for s in skipped), skipped
    assert all(s["status"] == "ok" for s in data["steps"] if not s["status"].startswith("skipped"))
    assert "tensorrt: no (" in (out / "tensorrt_check.md").read_text()
