"""``model.int8.onnx``: static INT8 quantisation of the FP32 graph with calibration images.

QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantised op), which ONNX Runtime
runs on CPU and TensorRT reads as explicit quantisation. TensorRT wants symmetric quantisation
(zero point 0) and signed INT8, so activations and weights are both symmetric INT8, weights per
output channel. Only the ViT's matrix products are quantised (MatMul, Gemm, Conv), and the nodes
the FP16 graph keeps in FP32 (clipad/deploy/fp16.py: LayerNorm, both attention softmaxes with
their logit MatMuls, and everything after the ViT) stay in FP32 here too.

The graph is kept only when its top-1% pixel agreement with the FP32 graph is >= 0.9; with
labelled held-out images (``gate_root``, `clipad calibrate --int8 --gate-data DIR`) the AUROC
quality gate decides instead (clipad.deploy.quality_gate: pixel and image AUROC drop against the
FP32 graph at most ``max_auroc_drop`` points), the agreement recorded beside it, and the gate
goes into the manifest (``parity.gates.int8``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from clipad.core.atomic import atomic_path
from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.core.progress import Tasks
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.fp16 import fp32_nodes
from clipad.deploy.manifest import ONNX_FP32, ONNX_INT8, Int8Entry, ParityFigures, QualityGate, Tolerance
from clipad.deploy.parity import TOLERANCES, compare, parity_images, run_graph
from clipad.deploy.quality_gate import DEFAULT_MAX_DROP_POINTS, gate_images, quality_gate

MIN_AGREEMENT = TOLERANCES["int8"]["top1pct_agreement"]
QUANTISED_OPS = ["MatMul", "Gemm", "Conv"]


def quantise(src: Path, dst: Path, images: np.ndarray, tasks: Tasks) -> None:
    """Write the QDQ INT8 graph of ``src`` to ``dst``; images: uint8 [N, S, S, 3] (the graph's input)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    advance = tasks.add("int8 calibration", len(images))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict | None:
            if self.i >= len(images):
                return None
            self.i += 1
            advance(1)
            return {"image": images[self.i - 1 : self.i]}

    exclude = fp32_nodes(onnx.load(str(src), load_external_data=False).graph)
    quantize_static(
        str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTISED_OPS,
        per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
        calibrate_method=CalibrationMethod.MinMax,
        # Symmetric for TensorRT. MinMax keeps only per-tensor reductions per image, so memory stays
        # small (ORT 1.32 drops data when CalibMaxIntermediateOutputs is set, so it is not).
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )


def make_int8(art: Artifacts, images: np.ndarray, tasks: Tasks, min_agreement: float = MIN_AGREEMENT,
              gate_root: Path | None = None, max_auroc_drop: float = DEFAULT_MAX_DROP_POINTS) -> tuple[ParityFigures, QualityGate | None]:
    """Quantise with ``images`` (uint8 [N, S, S, 3]), check against the FP32 graph on the
    export's parity images and up to 8 calibration images, and add the graph to the artifacts.

    Returns the parity figures and, with ``gate_root``, the AUROC quality gate; raises
    ClipadError (writing nothing) when the gate fails or, without one, when the top-1% pixel
    agreement is below ``min_agreement``.
    """
    gate_set = gate_images(Path(gate_root), art.manifest.category, art.image_size) if gate_root is not None else None
    with art.writing():
        src = art.verified_path(ONNX_FP32)
        # Made first, so that an invalid setting (a negative agreement) is refused before any work.
        entry = Int8Entry.create(min_agreement=min_agreement, format="QDQ, symmetric INT8 activations and per-channel weights",
                                 ops=QUANTISED_OPS, calibration="MinMax", source_sha256=art.manifest.files[ONNX_FP32])
        with tempfile.TemporaryDirectory(dir=art.root) as tmp:
            dst = Path(tmp) / ONNX_INT8
            quantise(src, dst, images, tasks)
            check = np.concatenate([parity_images(art.image_size, 3), images[:8]])
            ref_map, ref_prob = run_graph(src, check, art.max_batch)
            amap, prob = run_graph(dst, check, art.max_batch)
            figures = ParityFigures.create(**compare(ref_map, ref_prob, amap, prob), against="fp32 onnx", n_images=len(check),
                                           calibration_images=len(images))
            gate = None
            if gate_set is not None:
                x, labels, masks = gate_set
                gate = quality_gate(run_graph(src, x, art.max_batch), run_graph(dst, x, art.max_batch), labels, masks,
                                    max_auroc_drop, "fp32 onnx")
                if not gate.passed:
                    raise ClipadError(f"the INT8 graph fails its quality gate: pixel AUROC drop {gate.pixel_drop_points:.2f}, "
                                      f"image {gate.image_drop_points:.2f} points (> {max_auroc_drop:g}) on {gate.n_images} "
                                      "labelled images: not written, keep using FP32")
            elif figures.top1pct_agreement < min_agreement:
                raise ClipadError(f"the INT8 graph's top-1% pixel agreement with FP32 is {figures.top1pct_agreement:.3f} "
                                  f"(< {min_agreement}; rel L2 {figures.rel_l2:.2e}): not written, keep using FP32")
            with atomic_path(art.root / ONNX_INT8) as out:
                dst.replace(out)
        manifest = art.manifest.with_int8(file_sha256(art.root / ONNX_INT8), figures, Tolerance.create(**TOLERANCES["int8"]), entry)
        gates = {k: v for k, v in (manifest.parity.gates or {}).items() if k != "int8"}  # a new graph: an old gate no longer holds
        if gate is not None:
            gates["int8"] = gate
        art.update(manifest.replace(parity=manifest.parity.replace(gates=gates or None)))
    return figures, gate
