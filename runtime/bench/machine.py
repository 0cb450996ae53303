"""The machine a bench ran on, for its JSON."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from clipad.core.cpu import cpu_matrix_features, cpu_model


def machine_info() -> dict[str, Any]:
    """CPU model, cores, torch threads, platform, library versions, ONNX Runtime's providers and the GPU."""
    cpu = cpu_model()
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_matrix_features": cpu_matrix_features(),
        "load_average": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
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
