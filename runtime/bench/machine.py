"""The machine a bench ran on, for its JSON."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

MATRIX_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_matrix_features() -> list[str]:
    """The CPU's matrix-relevant flags from /proc/cpuinfo (VNNI for INT8, AVX-512 BF16 / AMX for BF16)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in MATRIX_FLAGS if f in flags]
    except OSError:
        pass
    return []


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch threads, platform, library versions, ONNX Runtime's providers and the GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpu_matrix_features": cpu_matrix_features(), "load_average": list(os.getloadavg()),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cuda": torch.version.cuda,
                            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        info["onnxruntime"] = None
    try:
        import openvino as ov

        info["openvino"] = ov.__version__
        from clipad.deploy.openvino_ir import device_capabilities

        info["openvino_cpu_capabilities"] = device_capabilities(ov.Core(), "CPU")
    except ImportError:
        info["openvino"] = None
    return info
