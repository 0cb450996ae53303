"""From the probes' records to one verdict per backend and the warnings (pure: tests feed it
records, also of a GPU machine, which cannot exist here)."""

from __future__ import annotations

from dataclasses import dataclass

from clipad.deploy.tensorrt.install import InstalledTensorRT, cuda_mismatch, tensorrt_ep_problem
from clipad.runtime.doctor.facts import (
    CHECKS,
    CudaFacts,
    Findings,
    OnnxRuntimeFacts,
    OpenVinoFacts,
    ProbeFailure,
    TensorRTFacts,
    TorchFacts,
    TritonFacts,
)

GPU_INSTALL = "pip install --extra-index-url https://pypi.nvidia.com 'clipad[gpu]'"


@dataclass(frozen=True)
class Verdict:
    """Whether clipad can use ``check`` here (None: not checked, see ``detail``) and what with,
    or why not, in one line."""

    check: str
    usable: bool | None
    detail: str


def _major(version: str | None) -> int | None:
    head = (version or "").split(".")[0]
    return int(head) if head.isdigit() else None


def _torch(t: TorchFacts) -> Verdict:
    build = f"CUDA {t.cuda_build} build" if t.cuda_build else "CPU build"
    if t.version is None:
        return Verdict("torch", False, "torch is not installed (clipad depends on it: reinstall clipad)")
    if t.import_error:
        return Verdict("torch", False, f"torch {t.version} does not import: {t.import_error}")
    if not t.imported:
        return Verdict(
            "torch", None, f"torch {t.version} ({build}) is installed; not imported (--deep imports it, ~3 s)"
        )
    where = f"CPU and CUDA ({t.gpu})" if t.cuda_available else "CPU; it sees no CUDA GPU"
    return Verdict("torch", True, f"torch {t.version} ({build}): {where}")


def _onnxruntime(o: OnnxRuntimeFacts, trt: TensorRTFacts | None) -> Verdict:
    if o.import_error:
        if not o.wheels:
            return Verdict(
                "onnxruntime",
                False,
                "ONNX Runtime is not installed: pip install 'clipad[cpu]' "
                f"(or on an NVIDIA GPU workstation: {GPU_INSTALL})",
            )
        return Verdict("onnxruntime", False, f"onnxruntime does not import: {o.import_error}")
    wheel = "/".join(o.wheels) or "onnxruntime"
    if o.gpu_session and o.gpu_session[0] == "CUDAExecutionProvider":
        where = "CUDA (CUDAExecutionProvider) and CPU"
        problem = _tensorrt_ep(o, trt)
        if "TensorrtExecutionProvider" in o.providers:
            where += f"; TensorRT provider: {problem or 'offered first'}"
    elif "CUDAExecutionProvider" in o.providers:
        why = o.gpu_session_error or "the session fell back to CPUExecutionProvider"
        where = f"CPU only: its CUDA provider does not load ({why})"
    else:
        where = "CPU (CPUExecutionProvider)"
    return Verdict("onnxruntime", True, f"{wheel} {o.version}: {where}")


def _installed(trt: TensorRTFacts | None) -> InstalledTensorRT | None:
    if trt is None or trt.version is None:
        return None
    return InstalledTensorRT(trt.version, trt.cuda_major, tuple(trt.distributions))


def _tensorrt_ep(o: OnnxRuntimeFacts, trt: TensorRTFacts | None) -> str | None:
    return tensorrt_ep_problem(o.tensorrt_ep_links, _installed(trt))


def _gpu_line(c: CudaFacts) -> str:
    g = c.gpus[0]
    more = f" (+{len(c.gpus) - 1} more)" if len(c.gpus) > 1 else ""
    return f"{g.name} (compute capability {g.compute_capability}, {g.memory_gib:g} GiB){more}"


def _no_gpu(c: CudaFacts | None) -> str:
    if c is None:
        return "no CUDA probe result"
    if c.import_error:
        return f"cuda-python does not import ({c.import_error})"
    if c.driver_cuda is None:
        return f"no NVIDIA driver ({c.device_error or 'cudaDriverGetVersion gives 0'})"
    return f"no CUDA GPU ({c.device_error or 'cudaGetDeviceCount gives 0'})"


def _tensorrt(t: TensorRTFacts, c: CudaFacts | None) -> Verdict:
    if t.version is None and t.import_error is None:
        return Verdict("tensorrt", False, f"TensorRT is not installed: {GPU_INSTALL}")
    if t.import_error:
        return Verdict(
            "tensorrt", False, f"tensorrt does not import ({t.import_error}): reinstall it with {GPU_INSTALL}"
        )
    version = t.module_version or t.version or "unknown"
    if (_major(version) or 0) < 10:
        return Verdict(
            "tensorrt", False, f"TensorRT {version} is too old: clipad builds strongly typed engines (TensorRT 10+)"
        )
    if c is None or c.cuda_python is None:
        return Verdict("tensorrt", False, f"cuda-python is not installed: {GPU_INSTALL}")
    mismatch = cuda_mismatch(_installed(t), c.cuda_python, c.driver_cuda)
    if mismatch:
        return Verdict("tensorrt", False, mismatch)
    if not c.gpus:
        return Verdict("tensorrt", False, f"TensorRT {version} is installed but there is {_no_gpu(c)}")
    return Verdict("tensorrt", True, f"TensorRT {version} with cuda-python {c.cuda_python} on {_gpu_line(c)}")


def _openvino(v: OpenVinoFacts) -> Verdict:
    if v.version is None:
        return Verdict("openvino", False, "OpenVINO is not installed: pip install 'clipad[openvino]'")
    if v.import_error:
        return Verdict("openvino", False, f"openvino {v.version} does not work: {v.import_error}")
    devices = "; ".join(
        f"{d} ({', '.join(c for c in caps if c in ('FP32', 'BF16', 'FP16', 'INT8'))})" for d, caps in v.devices.items()
    )
    return Verdict("openvino", True, f"openvino {v.version}: {devices or 'no devices'}")


def _triton(t: TritonFacts) -> Verdict:
    if t.client is None:
        return Verdict("triton", False, "tritonclient is not installed (clipad depends on it: reinstall clipad)")
    if t.client_error:
        return Verdict("triton", False, f"tritonclient {t.client} does not import: {t.client_error}")
    server = (
        f"local server {t.server_binary}"
        if t.server_binary
        else "no local server (pip install --no-deps nvidia-pytriton)"
    )
    return Verdict("triton", True, f"client {t.client}; {server}")


def _cuda(c: CudaFacts, torch: TorchFacts | None) -> Verdict:
    if c.gpus:
        return Verdict("cuda", True, f"{_gpu_line(c)}; the driver supports CUDA {c.driver_cuda}")
    if torch is not None and torch.cuda_available:
        return Verdict("cuda", True, f"{torch.gpu} (seen by torch; cuda-python: {_no_gpu(c)})")
    return Verdict("cuda", False, _no_gpu(c))


def _ok(record, kind):
    """``record`` when the probe gave one of type ``kind``, else None (failed or not probed)."""
    return record if isinstance(record, kind) else None


def _verdict(check: str, findings: Findings) -> Verdict:
    record = getattr(findings, check)
    if isinstance(record, ProbeFailure):
        return Verdict(check, False, f"its probe failed: {record.error}")
    if record is None:
        return Verdict(check, None, "not probed")
    trt, cuda = _ok(findings.tensorrt, TensorRTFacts), _ok(findings.cuda, CudaFacts)
    judge = {
        "torch": lambda: _torch(record),
        "onnxruntime": lambda: _onnxruntime(record, trt),
        "tensorrt": lambda: _tensorrt(record, cuda),
        "openvino": lambda: _openvino(record),
        "triton": lambda: _triton(record),
        "cuda": lambda: _cuda(record, _ok(findings.torch, TorchFacts)),
    }
    return judge[check]()


def verdicts(findings: Findings) -> list[Verdict]:
    """One verdict per ``CHECKS`` entry, in that order; a probe that failed is a verdict too."""
    return [_verdict(check, findings) for check in CHECKS]


def warnings(findings: Findings) -> list[str]:
    """What will go wrong although no check fails outright, one line each."""
    out = []
    o = _ok(findings.onnxruntime, OnnxRuntimeFacts)
    t = _ok(findings.torch, TorchFacts)
    c = _ok(findings.cuda, CudaFacts)
    if o is not None and len(o.wheels) > 1:
        out.append(
            f"{' and '.join(o.wheels)} are installed together: they overwrite each other's `onnxruntime` module "
            "and the GPU providers go missing; pip uninstall -y "
            + " ".join(o.wheels)
            + ", then install one: 'clipad[gpu]' on an NVIDIA workstation, 'clipad[cpu]' elsewhere"
        )
    driver = _major(c.driver_cuda) if c is not None else None
    if c is not None and driver is not None:
        if t is not None and (_major(t.cuda_build) or 0) > driver:
            out.append(
                f"torch {t.version} is a CUDA {t.cuda_build} build, the driver supports CUDA {c.driver_cuda}: "
                "torch will not use the GPU (update the driver)"
            )
        if o is not None and (_major(o.cuda_build) or 0) > driver:
            out.append(
                f"onnxruntime-gpu is a CUDA {o.cuda_build} build, the driver supports CUDA {c.driver_cuda}: "
                "its GPU providers will not load (update the driver)"
            )
    if o is not None and "TensorrtExecutionProvider" in o.providers and not o.import_error:
        problem = _tensorrt_ep(o, _ok(findings.tensorrt, TensorRTFacts))
        if problem:
            out.append(f"{problem}: `--backend onnxruntime` serves on its CUDA provider")
    return out


def auto_choice(vs: list[Verdict]) -> str:
    """What `--backend auto` serves with here (runtime.backends.select_backend's order: a TensorRT
    plan, then ONNX Runtime, then the torch reference), in one line."""
    usable = {v.check: v for v in vs if v.usable}
    parts = []
    if "tensorrt" in usable:
        parts.append("TensorRT for artifacts with an engine built here")
    if "onnxruntime" in usable:
        where = usable["onnxruntime"].detail.split(": ", 1)[-1].split(";")[0]
        parts.append(f"ONNX Runtime on {where}")
    elif not any(v.check == "torch" and v.usable is False for v in vs):
        parts.append("the torch reference (no ONNX Runtime)")
    return ", else ".join(parts) if parts else "nothing: neither ONNX Runtime nor torch works here"
