"""OpenVINO IR from the exported graph, its FP32 islands, and how every precision is compiled.

``convert_ir`` converts ``model.onnx`` (the same graph, with its pre- and post-processing and
constants) into ``model.xml``/``model.bin`` with FP32 weights (no FP16 compression), then marks
the layers that must stay in FP32 under a reduced-precision hint with OpenVINO's "precise" runtime
attribute (``ov::DisableFP16Compression``, serialised in the IR as
``<attribute name="precise" version="0"/>``; the CPU plugin honours it for BF16 as well as
FP16). The island choice is the FP16 graph's (clipad.deploy.fp16: method.md section 9's risks)
as OpenVINO names the ops: every LayerNorm (MVN), every Softmax, every attention (the ONNX
frontend fuses the explicit MatMul-scale-Softmax-MatMul into ScaledDotProductAttention), and
every layer outside the ViT scope (projection, L2 norms, feature surgery, x100 logits, SDP+
heads, upsampling, blur). The Python API cannot set that attribute (a string rt_info entry is
ignored by the plugin, measured), so it is written into the saved IR's XML.

Measured on an AMD EPYC (avx512_bf16, OpenVINO 2026.4.1), ViT-B-16-plus-240 SDP+: with the
marking, every MVN and the post-ViT FullyConnected/MatMul layers run in f32 under the bf16 hint
(the runtime model's runtimePrecision); the attentions do not: the fused attention subgraph (a
snippets kernel) reports bf16, and with snippets disabled (SNIPPETS_MODE DISABLE) the plugin's
own MatMul + Softmax decomposition is bf16 too (the marking does not survive the decomposition),
as is one of the two post-ViT softmaxes. The map error against f32 was the same either way
(relative L2 1.6e-3), so the BF16 error here comes from the ViT's matrix products, not the
attention's precision.

Precision is always explicit (``compile_properties``): OpenVINO's default on CPUs with BF16 is
BF16 everywhere, which a user would not see. fp32 -> f32 hint, bf16 -> bf16, fp16 -> f16 (each on
model.xml), int8 -> the NNCF IR with an f32 hint for its unquantised rest.

This module imports openvino and nncf only inside functions; it never needs torch.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from clipad.core.choices import OpenVinoMode, check_served, parse_choice
from clipad.core.errors import ClipadError
from clipad.deploy.fp16 import VIT_SCOPE

# The ONNX FP32_OPS of clipad.deploy.fp16 as OpenVINO's converter names them, plus the fused attention.
OV_FP32_TYPES = ("MVN", "Softmax", "ScaledDotProductAttention")
_NOT_COMPUTE = ("Const", "Parameter", "Result")
OV_DEVICES = ("CPU", "GPU", "AUTO")
# OpenVINO's OPTIMIZATION_CAPABILITIES entry a precision needs on the device.
CAPABILITY = {"fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "int8": "INT8"}


def require_openvino():
    """The openvino module, or one line saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise ClipadError(
            "OpenVINO is not installed: pip install 'clipad[openvino]' (or pip install openvino nncf)"
        ) from None
    return openvino


def fp32_layer(op_type: str, name: str) -> bool:
    """Whether an IR layer (type, friendly name) stays in FP32 under a reduced-precision hint."""
    if op_type in _NOT_COMPUTE:
        return False
    return op_type in OV_FP32_TYPES or not name.startswith(VIT_SCOPE)


def mark_fp32_islands(xml_path: str | Path) -> int:
    """Add the "precise" runtime attribute to every ``fp32_layer`` of a saved IR; returns how many."""
    tree = ET.parse(str(xml_path))
    marked = 0
    for layer in tree.getroot().iter("layer"):
        if not fp32_layer(layer.get("type", ""), layer.get("name", "")):
            continue
        rt = layer.find("rt_info")
        if rt is None:
            rt = ET.Element("rt_info")
            layer.insert(1 if layer.find("data") is not None else 0, rt)
        if not any(a.get("name") == "precise" for a in rt):
            ET.SubElement(rt, "attribute", {"name": "precise", "version": "0"})
        marked += 1
    tree.write(str(xml_path), encoding="utf-8", xml_declaration=True)
    return marked


def convert_ir(onnx_path: str | Path, xml_path: str | Path) -> int:
    """Write the FP32 IR of ``onnx_path`` (``xml_path`` and its .bin) with the islands marked;
    returns the number of marked layers."""
    ov = require_openvino()
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return mark_fp32_islands(xml_path)


def ov_device(device: str) -> str:
    """clipad's --device for OpenVINO: auto and cpu -> CPU (the precisions and islands were
    verified on CPUs only; an iGPU is chosen explicitly), gpu -> GPU; OpenVINO's own names (CPU,
    GPU, GPU.1, AUTO) verbatim. cuda is refused (OpenVINO has no CUDA device)."""
    mapped = {"auto": "CPU", "cpu": "CPU", "gpu": "GPU"}.get(device, device)
    base = mapped.split(".", 1)[0]
    if base not in OV_DEVICES or (mapped != base and not (base == "GPU" and mapped[4:].isdigit())):
        raise ClipadError(
            f"unknown OpenVINO device '{device}' (use cpu, gpu, auto, or OpenVINO's CPU, GPU, GPU.N, AUTO)"
        )
    return mapped


def compile_properties(precision: str, mode: str = "latency") -> dict[str, Any]:
    """The compile properties of a precision and performance mode: the inference precision is
    always set (never OpenVINO's device default), and the performance hint."""
    ov = require_openvino()
    import openvino.properties.hint as hints

    types = {"fp32": ov.Type.f32, "bf16": ov.Type.bf16, "fp16": ov.Type.f16, "int8": ov.Type.f32}
    check_served("openvino", precision)
    parse_choice(OpenVinoMode, mode, "--openvino-mode")
    perf = hints.PerformanceMode.LATENCY if mode == "latency" else hints.PerformanceMode.THROUGHPUT
    return {hints.inference_precision: types[precision], hints.performance_mode: perf}


def device_capabilities(core, device: str) -> list[str]:
    """OPTIMIZATION_CAPABILITIES of ``device`` (AUTO: of the CPU)."""
    target = "CPU" if device == "AUTO" else device
    if target.split(".", 1)[0] not in core.available_devices and target not in core.available_devices:
        raise ClipadError(
            f"OpenVINO has no {device} device here (it has {', '.join(core.available_devices) or 'none'})"
        )
    return list(core.get_property(target, "OPTIMIZATION_CAPABILITIES"))


def compile_ir(xml_path: str | Path, precision: str, device: str = "CPU", mode: str = "latency"):
    """Read and compile an IR with an explicit precision; refuses a precision the device lacks
    and checks the compiled model's inference precision property. Returns the CompiledModel."""
    ov = require_openvino()
    import openvino.properties.hint as hints

    core = ov.Core()
    caps = device_capabilities(core, device)
    if CAPABILITY[precision] not in caps:
        raise ClipadError(
            f"OpenVINO's {device} device has no {precision} support here (capabilities: {', '.join(caps)})"
        )
    props = compile_properties(precision, mode)
    try:
        compiled = core.compile_model(core.read_model(str(xml_path)), device, props)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClipadError(f"OpenVINO could not compile {Path(xml_path).name} for {device}: {first}") from None
    if device != "AUTO":
        got = compiled.get_property(hints.inference_precision)
        if got != props[hints.inference_precision]:
            raise ClipadError(
                f"OpenVINO compiled {Path(xml_path).name} with inference precision {got}, not the {precision} asked for"
            )
    return compiled
