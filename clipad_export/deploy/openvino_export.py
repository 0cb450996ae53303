"""`clipad export --openvino`: the OpenVINO IR of an export's FP32 graph, its INT8 IR (NNCF) and
the parity figures of every precision the CPU runs, as the manifest's ``openvino`` record.

fp32 must be within the FP32 tolerance of the PyTorch reference (the export fails otherwise);
bf16 (when the CPU has it) and int8 are measured against the same reference and recorded, each
with its tolerance ``violations``. Map agreement on random weights says little (the maps are
differences of nearly parallel text vectors, which amplify every rounding), so a reduced
precision that misses it is kept and recorded with a warning; what decides whether it is served
by ``--precision auto`` is its AUROC quality gate (``OpenVinoEntry.gates``).

INT8: NNCF post-training quantisation of the IR (transformer preset), calibrated on synthetic
parts; the ignored scope is the FP32 islands of ``openvino_ir.fp32_layer`` by name, so LayerNorms,
softmaxes, both attentions, the L2 norms, feature surgery and everything after the ViT stay float.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.deploy.artifacts import hash_files
from clipad.deploy.gate_step import Baseline, gate_step
from clipad.deploy.manifest import (
    ONNX_FP32,
    OV_BIN,
    OV_INT8_BIN,
    OV_INT8_XML,
    OV_XML,
    OpenVinoEntry,
    OvPrecision,
    ParityFigures,
    QualityGate,
)
from clipad.deploy.openvino_ir import convert_ir, device_capabilities, fp32_layer, require_openvino
from clipad.deploy.quality_gate import GateSet
from clipad.deploy.runners.base import Outputs
from clipad.deploy.runners.openvino import OpenVinoRunner


def quantize_int8(xml: Path, dst: Path, images: np.ndarray) -> None:
    """Write NNCF's INT8 IR of ``xml`` to ``dst``; images: uint8 [N, S, S, 3] calibration frames."""
    ov = require_openvino()
    try:
        import nncf
    except ImportError:
        raise ClipadError("NNCF is not installed: pip install 'clipad[openvino]' (or pip install nncf)") from None
    import logging

    nncf.set_log_level(logging.WARNING)  # its per-op INFO lines would flood the export's output
    model = ov.Core().read_model(str(xml))
    keep = [op.get_friendly_name() for op in model.get_ops() if fp32_layer(op.get_type_name(), op.get_friendly_name())]
    dataset = nncf.Dataset([images[i : i + 1] for i in range(len(images))])
    # NNCF draws its own progress bars on stdout, whatever the log level; the export's own bar
    # (stderr) covers this step, so NNCF's are kept out of the user's output.
    with contextlib.redirect_stdout(io.StringIO()):
        quantized = nncf.quantize(
            model,
            dataset,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(images),
            ignored_scope=nncf.IgnoredScope(names=keep, validate=False),
        )
    ov.save_model(quantized, str(dst), compress_to_fp16=False)


def make_openvino(
    stage: Path,
    images: np.ndarray,
    reference: Outputs,
    calibration: np.ndarray,
    max_batch: int,
    gate: GateSet | None = None,
    int8: bool = True,
) -> tuple[OpenVinoEntry, list[str]]:
    """Write the IRs into ``stage`` (beside its model.onnx) and return the record and warnings.

    images: uint8 [N, S, S, 3] parity frames with the reference's outputs on them (anomaly_map
    [N, S, S], image_prob [N]); calibration: uint8 frames for NNCF; ``gate``: labelled images for
    the quality gate of every reduced precision against the FP32 IR.
    """
    ov = require_openvino()
    core = ov.Core()
    cpu = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    caps = device_capabilities(core, "CPU")
    marked = convert_ir(stage / ONNX_FP32, stage / OV_XML)
    baseline = Baseline(images, reference, "pytorch reference")
    inputs = f"{len(images)} synthetic images (parts with defects, noise)"
    parity: dict[OvPrecision, ParityFigures] = {}
    gates: dict[OvPrecision, QualityGate] = {}
    ir: dict[OvPrecision, str] = {"fp32": OV_XML}
    warnings: list[str] = []
    candidates: list[OvPrecision] = [p for p in ("bf16", "fp16") if p.upper() in caps]
    with OpenVinoRunner(stage / OV_XML, "fp32", max_batch=max_batch) as fp32:
        parity["fp32"] = gate_step(fp32, baseline, "fp32", inputs=inputs).figures
        if parity["fp32"].violations:
            raise ClipadError(
                f"parity failed for the OpenVINO fp32 IR ({'; '.join(parity['fp32'].violations)}); nothing was written"
            )
        if int8:
            quantize_int8(stage / OV_XML, stage / OV_INT8_XML, calibration)
            candidates.append("int8")
        for precision in candidates:
            xml = OV_INT8_XML if precision == "int8" else OV_XML
            extra = {"calibration_images": len(calibration)} if precision == "int8" else {}
            with OpenVinoRunner(stage / xml, precision, max_batch=max_batch) as runner:
                judged = gate_step(runner, baseline, precision, gate, fp32, "openvino fp32", inputs=inputs, **extra)
            parity[precision], ir[precision] = judged.figures, xml
            if judged.gate is not None:
                gates[precision] = judged.gate
    if "int8" in parity and parity["int8"].violations:
        warnings.append(
            f"the OpenVINO INT8 IR misses the map-agreement limits ({'; '.join(parity['int8'].violations)}); it is "
            "kept, but `--precision auto` serves it only where its AUROC quality gate passed"
        )
    entry = OpenVinoEntry.create(
        version=ov.__version__,
        source_sha256=file_sha256(stage / ONNX_FP32),
        ir=ir,
        fp32_layers=marked,
        parity=parity,
        gates=gates or None,
        cpu=cpu,
    )
    return entry, warnings


def ir_hashes(root: Path) -> dict[str, str]:
    """sha256 of the IR files present in ``root``."""
    return hash_files(root, (OV_XML, OV_BIN, OV_INT8_XML, OV_INT8_BIN))
