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
from clipad.deploy.manifest import ONNX_FP32, OV_BIN, OV_INT8_BIN, OV_INT8_XML, OV_XML, OpenVinoEntry, ParityFigures
from clipad.deploy.openvino_ir import (
    compile_ir,
    convert_ir,
    device_capabilities,
    fp32_layer,
    require_openvino,
    run_compiled,
)
from clipad.deploy.parity import compare, violations


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


def _figures(
    ref_map: np.ndarray, ref_prob: np.ndarray, out: tuple[np.ndarray, np.ndarray], precision: str, inputs: str
) -> ParityFigures:
    f = compare(ref_map, ref_prob, *out)
    return ParityFigures.create(**f, against="pytorch reference", inputs=inputs, violations=violations(f, precision))


def make_openvino(
    stage: Path,
    images: np.ndarray,
    ref_map: np.ndarray,
    ref_prob: np.ndarray,
    calibration: np.ndarray,
    max_batch: int,
    int8: bool = True,
) -> tuple[OpenVinoEntry, list[str]]:
    """Write the IRs into ``stage`` (beside its model.onnx) and return the record and warnings.

    images: uint8 [N, S, S, 3] parity frames with the reference's outputs ref_map [N, S, S] and
    ref_prob [N]; calibration: uint8 frames for NNCF.
    """
    ov = require_openvino()
    core = ov.Core()
    cpu = str(core.get_property("CPU", "FULL_DEVICE_NAME"))
    caps = device_capabilities(core, "CPU")
    marked = convert_ir(stage / ONNX_FP32, stage / OV_XML)
    inputs = f"{len(images)} synthetic images (parts with defects, noise)"
    parity: dict[str, ParityFigures] = {}
    ir = {"fp32": OV_XML}
    warnings: list[str] = []
    for precision in ("fp32", "bf16", "fp16"):
        if precision != "fp32" and precision.upper() not in caps:
            continue
        compiled = compile_ir(stage / OV_XML, precision)
        parity[precision] = _figures(ref_map, ref_prob, run_compiled(compiled, images, max_batch), precision, inputs)
        del compiled
        if precision == "fp32" and parity["fp32"].violations:
            raise ClipadError(
                f"parity failed for the OpenVINO fp32 IR ({'; '.join(parity['fp32'].violations)}); nothing was written"
            )
        ir[precision] = OV_XML
    if int8:
        quantize_int8(stage / OV_XML, stage / OV_INT8_XML, calibration)
        f = _figures(
            ref_map, ref_prob, run_compiled(compile_ir(stage / OV_INT8_XML, "int8"), images, max_batch), "int8", inputs
        )
        parity["int8"] = f.replace(calibration_images=len(calibration))
        ir["int8"] = OV_INT8_XML
        if f.violations:
            warnings.append(
                f"the OpenVINO INT8 IR misses the map-agreement limits ({'; '.join(f.violations)}); it is kept, "
                "but `--precision auto` serves it only where its AUROC quality gate passed"
            )
    entry = OpenVinoEntry.create(
        version=ov.__version__,
        source_sha256=file_sha256(stage / ONNX_FP32),
        ir=ir,
        fp32_layers=marked,
        parity=parity,
        cpu=cpu,
    )
    return entry, warnings


def ir_hashes(root: Path) -> dict[str, str]:
    """sha256 of the IR files present in ``root``."""
    return hash_files(root, (OV_XML, OV_BIN, OV_INT8_XML, OV_INT8_BIN))
