"""The doctor's probes. Each runs in a process of its own
(``python -m clipad.runtime.doctor.probes NAME [--deep]``) and prints its record as one JSON line
after ``MARKER``; whatever the libraries print besides stays in that process's output.

Probes import what they look at inside the function, never at module level, and turn every
failure into a field of their record."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from clipad.core.packages import installed_version
from clipad.runtime.doctor.facts import (
    CameraFacts,
    ChromiumFacts,
    CpuFacts,
    CudaFacts,
    Facts,
    GenICamFacts,
    GpuFacts,
    LibraryFacts,
    OnnxRuntimeFacts,
    OpenVinoFacts,
    PythonFacts,
    StationFacts,
    TensorRTFacts,
    TorchFacts,
    TritonFacts,
    WeightsFacts,
    to_json,
)

MARKER = "CLIPAD-DOCTOR-FACTS "
# Every distribution that installs the `onnxruntime` module: two of them in one environment
# overwrite each other's files, and the GPU providers go missing (microsoft/onnxruntime#26996).
ORT_WHEELS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-openvino",
    "onnxruntime-directml",
    "onnxruntime-training",
    "onnxruntime-qnn",
    "onnxruntime-rocm",
    "onnxruntime-migraphx",
    "ort-nightly",
    "ort-nightly-gpu",
)


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def probe_python(deep: bool = False) -> PythonFacts:
    return PythonFacts(platform.python_version(), sys.executable, platform.platform())


def torch_cuda_build() -> str | None:
    """``torch.version.cuda`` read from torch's installed version.py, without importing torch
    (the import alone takes about 3 s); None for a CPU build or when it cannot be read."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        text = (Path(list(spec.submodule_search_locations)[0]) / "version.py").read_text()
    except OSError:
        return None
    m = re.search(r"^cuda\s*(?::[^=\n]*)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    return m.group(1) if m else None


def probe_torch(deep: bool = False) -> TorchFacts:
    version = installed_version("torch")
    if version is None or not deep:
        return TorchFacts(version, torch_cuda_build() if version else None)
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - a torch that does not import is the finding
        return TorchFacts(version, torch_cuda_build(), imported=True, import_error=_error(err))
    available = bool(torch.cuda.is_available())
    return TorchFacts(
        version,
        torch.version.cuda,
        imported=True,
        cuda_available=available,
        gpu=torch.cuda.get_device_name(0) if available else None,
    )


def _gpu_session_providers(ort) -> tuple[list[str] | None, str | None]:
    """The providers a real session asks CUDA for gets: the only reliable sign that the CUDA EP
    loads (get_available_providers lists it whenever the wheel has it)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "doctor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its fallback warnings are this probe's finding, not output
    try:
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
        return session.get_providers(), None
    except Exception as err:  # noqa: BLE001
        return None, _error(err)


def probe_onnxruntime(deep: bool = False) -> OnnxRuntimeFacts:
    from clipad.deploy.tensorrt.install import linked_tensorrt_major, onnxruntime_tensorrt_ep_library

    wheels = {d: v for d in ORT_WHEELS if (v := installed_version(d)) is not None}
    links = None
    lib = onnxruntime_tensorrt_ep_library()
    if lib is not None:
        try:
            links = linked_tensorrt_major(lib)
        except ImportError:  # pyelftools (clipad[gpu]) not installed
            links = None
    try:
        import onnxruntime as ort
    except Exception as err:  # noqa: BLE001
        return OnnxRuntimeFacts(wheels, import_error=_error(err), tensorrt_ep_links=links)
    providers = list(ort.get_available_providers())
    session, session_error = (None, None)
    if "CUDAExecutionProvider" in providers:
        session, session_error = _gpu_session_providers(ort)
    return OnnxRuntimeFacts(
        wheels,
        ort.__version__,
        providers=providers,
        cuda_build=getattr(ort, "cuda_version", None) or None,
        tensorrt_ep_links=links,
        gpu_session=session,
        gpu_session_error=session_error,
    )


def probe_tensorrt(deep: bool = False) -> TensorRTFacts:
    from clipad.deploy.tensorrt.install import installed_tensorrt

    found = installed_tensorrt()
    base = (
        dict(version=found.version, cuda_major=found.cuda_major, distributions=list(found.distributions))
        if found
        else {"version": None}
    )
    if found is None and importlib.util.find_spec("tensorrt") is None:
        return TensorRTFacts(**base)
    try:
        import tensorrt
    except Exception as err:  # noqa: BLE001 - a half-installed TensorRT is the finding
        return TensorRTFacts(**base, import_error=_error(err))
    return TensorRTFacts(**base, module_version=str(getattr(tensorrt, "__version__", "unknown")))


def probe_cuda(deep: bool = False) -> CudaFacts:
    version = installed_version("cuda-bindings", "cuda-python")
    try:
        from cuda.bindings import runtime as cudart
    except Exception as exc:  # noqa: BLE001
        return CudaFacts(version, import_error=_error(exc))
    ok = cudart.cudaError_t.cudaSuccess
    status, driver = cudart.cudaDriverGetVersion()  # 1000 * major + 10 * minor; 0 without a driver
    driver_cuda = f"{driver // 1000}.{driver % 1000 // 10}" if status == ok and driver else None
    status, count = cudart.cudaGetDeviceCount()
    if status != ok:
        return CudaFacts(version, driver_cuda=driver_cuda, device_error=getattr(status, "name", str(status)))
    gpus = []
    for i in range(count or 0):
        status, prop = cudart.cudaGetDeviceProperties(i)
        if status != ok:
            continue
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        gpus.append(
            GpuFacts(name.split("\x00")[0].strip(), f"{prop.major}.{prop.minor}", round(prop.totalGlobalMem / 2**30, 1))
        )
    return CudaFacts(version, driver_cuda=driver_cuda, gpus=gpus)


def probe_openvino(deep: bool = False) -> OpenVinoFacts:
    version = installed_version("openvino")
    if version is None:
        return OpenVinoFacts(None)
    try:
        import openvino as ov

        core = ov.Core()
        devices = list(core.available_devices)
        caps = {d: [str(c) for c in core.get_property(d, "OPTIMIZATION_CAPABILITIES")] for d in devices}
        names = {d: str(core.get_property(d, "FULL_DEVICE_NAME")) for d in devices}
    except Exception as err:  # noqa: BLE001
        return OpenVinoFacts(version, import_error=_error(err))
    return OpenVinoFacts(version, devices=caps, device_names=names)


def probe_cpu(deep: bool = False) -> CpuFacts:
    from clipad.core.cpu import cpu_matrix_features, cpu_model

    return CpuFacts(cpu_model(), os.cpu_count(), cpu_matrix_features())


def probe_triton(deep: bool = False) -> TritonFacts:
    from clipad.core.errors import ClipadError
    from clipad.deploy.triton_server import find_install

    client = installed_version("tritonclient")
    client_error = None
    if client is not None:
        try:
            import tritonclient.grpc  # noqa: F401
            import tritonclient.http  # noqa: F401
        except Exception as err:  # noqa: BLE001
            client_error = _error(err)
    try:
        binary, problem = str(find_install().binary), None
    except ClipadError as err:
        binary, problem = None, str(err)
    return TritonFacts(client, client_error, binary, problem)


def probe_chromium(deep: bool = False) -> ChromiumFacts:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        return ChromiumFacts(None)
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return ChromiumFacts(path, out or None)


def _library(distribution: str, module: str) -> LibraryFacts:
    version = installed_version(distribution)
    if version is None:
        return LibraryFacts(None)
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any import failure is the finding
        return LibraryFacts(version, _error(err))
    return LibraryFacts(version)


def probe_station(deep: bool = False) -> StationFacts:
    return StationFacts(
        _library("paho-mqtt", "paho.mqtt.client"),
        _library("asyncua", "asyncua"),
        _library("prometheus-client", "prometheus_client"),
        shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None),
    )


def probe_genicam(deep: bool = False) -> GenICamFacts:
    """GenICam cameras (GigE Vision, USB3 Vision) that Aravis finds, or why Aravis is unusable."""
    from clipad.core.errors import ClipadError
    from clipad.runtime.cameras.aravis import list_devices, load_aravis

    try:
        load_aravis()
    except ClipadError as err:
        return GenICamFacts(str(err))
    try:
        found = list_devices()
    except Exception as err:  # noqa: BLE001
        return GenICamFacts(None, error=_error(err))
    return GenICamFacts(None, [CameraFacts(d.source, d.vendor, d.model, d.serial, d.address) for d in found])


def probe_weights(deep: bool = False) -> WeightsFacts:
    from clipad.core.weights import (
        DEFAULT_HF_HUB,
        DEFAULT_MODEL,
        DEFAULT_PRETRAINED,
        DINOV2_TIMM,
        cached_hub_file,
        dinov2_cached_files,
    )

    try:
        from huggingface_hub import constants

        dinov2 = {b: str(found[0]) for b in DINOV2_TIMM if (found := dinov2_cached_files(b))}
        return WeightsFacts(
            DEFAULT_MODEL,
            DEFAULT_PRETRAINED,
            str(constants.HF_HUB_CACHE),
            cached_hub_file(DEFAULT_HF_HUB),
            None,
            dinov2,
        )
    except Exception as err:  # noqa: BLE001
        return WeightsFacts(DEFAULT_MODEL, DEFAULT_PRETRAINED, None, error=_error(err))


PROBES: dict[str, Callable[[bool], Facts]] = {
    "python": probe_python,
    "cpu": probe_cpu,
    "torch": probe_torch,
    "onnxruntime": probe_onnxruntime,
    "tensorrt": probe_tensorrt,
    "cuda": probe_cuda,
    "openvino": probe_openvino,
    "triton": probe_triton,
    "chromium": probe_chromium,
    "station": probe_station,
    "genicam": probe_genicam,
    "weights": probe_weights,
}


def run_probe(name: str, deep: bool = False) -> Facts:
    return PROBES[name](deep)


def main(argv: list[str]) -> int:
    name, deep = argv[0], "--deep" in argv[1:]
    facts = run_probe(name, deep)
    sys.stdout.write("\n" + MARKER + json.dumps(to_json(facts)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
