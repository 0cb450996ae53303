"""INT8 from the user's calibration images: ``model.int8.onnx`` (ONNX Runtime) or NNCF's
``model.int8.xml`` (OpenVINO), made, judged and recorded the same way.

ONNX Runtime: QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantised op), which
ONNX Runtime runs on CPU and TensorRT reads as explicit quantisation. TensorRT wants symmetric
quantisation (zero point 0) and signed INT8, so activations and weights are both symmetric INT8,
weights per output channel. Only the ViT's matrix products are quantised (MatMul, Gemm, Conv),
and the nodes the FP16 graph keeps in FP32 (clipad/deploy/fp16.py: LayerNorm, both attention
softmaxes with their logit MatMuls, and everything after the ViT) stay in FP32 here too.

OpenVINO: the export's INT8 IR is calibrated on 8 synthetic frames; made again here from images
of the part (`clipad calibrate --int8 --int8-backend openvino`), with the same NNCF settings and
FP32 islands (clipad.deploy.openvino_export.quantize_int8). On the trained SDP+ model of
docs/benchmarks.md that lowered the image-probability error against FP32 by a third.

Either graph is kept only when its top-1% pixel agreement with its FP32 graph is >= 0.9; with
labelled held-out images (``gate_root``, `--gate-data DIR`) the AUROC quality gate decides instead
(clipad.deploy.quality_gate: pixel and image AUROC drop against FP32 at most ``max_auroc_drop``
points), the agreement recorded beside it, and the gate goes into the manifest (``parity.gates``
for ONNX Runtime, ``openvino.gates`` for OpenVINO). A graph that is not kept is not written.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import numpy as np
import onnx

from clipad.core.atomic import atomic_path
from clipad.core.choices import Int8Backend, Precision, parse_choice
from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.core.progress import Tasks
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.fp16 import fp32_nodes
from clipad.deploy.gate_step import Baseline, gate_step
from clipad.deploy.manifest import (
    ONNX_FP32,
    ONNX_INT8,
    OV_BIN,
    OV_INT8_BIN,
    OV_INT8_XML,
    OV_XML,
    Int8Entry,
    Manifest,
    OvPrecision,
    ParityFigures,
    QualityGate,
    Tolerance,
)
from clipad.deploy.parity import TOLERANCES, parity_images
from clipad.deploy.quality_gate import DEFAULT_MAX_DROP_POINTS, gate_images
from clipad.deploy.runners.base import Runner
from clipad.deploy.runners.onnxruntime import OnnxRuntimeRunner
from clipad.methods.registry import get_method

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
    # ONNX Runtime's quantiser logs advice ("consider pre-processing") on the root logger at
    # WARNING; it is not about the user's input, so it is kept out of their output.
    logging.disable(logging.WARNING)
    try:
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTISED_OPS,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
            # Symmetric for TensorRT. MinMax keeps only per-tensor reductions per image, so memory stays
            # small (ORT 1.32 drops data when CalibMaxIntermediateOutputs is set, so it is not).
            # Biases stay float: a quantised Conv/Gemm bias is an INT32 DequantizeLinear, which
            # TensorRT's parser does not take (onnx-tensorrt docs/operators.md, 10.1-GA: INT8, FP8,
            # INT4 only); DINOv2's patch embedding is the first Conv with a bias.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    finally:
        logging.disable(logging.NOTSET)


@dataclass(frozen=True)
class Int8Target:
    """Where an INT8 model goes: ``backend`` (which runner and record), ``label`` (for
    messages), ``sources`` (its FP32 model's files, hash-checked; the first is the one quantised),
    ``files`` (what quantising writes, replaced in this order: an IR's .xml last, after its .bin),
    ``against`` (how the FP32 side is named), and ``limits`` (the precision whose tolerance
    violations the parity figures list, as the export's OpenVINO figures do; None: not listed)."""

    backend: Int8Backend
    label: str
    sources: tuple[str, ...]
    files: tuple[str, ...]
    against: str
    limits: str | None = None


TARGETS: dict[Int8Backend, Int8Target] = {
    "onnxruntime": Int8Target("onnxruntime", "INT8 graph", (ONNX_FP32,), (ONNX_INT8,), "fp32 onnx"),
    "openvino": Int8Target(
        "openvino", "OpenVINO INT8 IR", (OV_XML, OV_BIN), (OV_INT8_BIN, OV_INT8_XML), "openvino fp32", "int8"
    ),
}


def onnxruntime_entry(min_agreement: float, source_sha256: str) -> Int8Entry:
    """The manifest's ``int8`` record of a graph quantised from ``model.onnx`` (sha256 ``source_sha256``)."""
    return Int8Entry.create(
        min_agreement=min_agreement,
        format="QDQ, symmetric INT8 activations and per-channel weights",
        ops=QUANTISED_OPS,
        calibration="MinMax",
        source_sha256=source_sha256,
    )


def _quantise(target: Int8Target, src: Path, dst: Path, images: np.ndarray, tasks: Tasks) -> None:
    if target.backend == "onnxruntime":
        quantise(src, dst, images, tasks)
        return
    from clipad.deploy.openvino_export import quantize_int8

    step = tasks.add("int8 calibration (NNCF)", 1)
    quantize_int8(src, dst, images)
    step(1)


def _runner(target: Int8Target, path: Path, precision: Literal["fp32", "int8"], max_batch: int) -> Runner:
    if target.backend == "onnxruntime":
        return OnnxRuntimeRunner(path, precision, "cpu", max_batch=max_batch)
    from clipad.deploy.runners.openvino import OpenVinoRunner

    return OpenVinoRunner(path, precision, max_batch=max_batch)


def _record(
    target: Int8Target,
    manifest: Manifest,
    root: Path,
    figures: ParityFigures,
    gate: QualityGate | None,
    entry: Int8Entry | None,
) -> Manifest:
    """``manifest`` with the new INT8 model recorded (ONNX Runtime: ``parity`` and ``int8``, with
    ``entry``; OpenVINO: ``openvino``); an old gate of the INT8 model no longer holds."""
    if target.backend == "onnxruntime":
        assert entry is not None  # made before any work for the onnxruntime target
        m = manifest.with_int8(file_sha256(root / ONNX_INT8), figures, Tolerance.create(**TOLERANCES["int8"]), entry)
        gates: dict[Precision, QualityGate] = {k: v for k, v in (m.parity.gates or {}).items() if k != "int8"}
        if gate is not None:
            gates["int8"] = gate
        return m.replace(parity=m.parity.replace(gates=gates or None))
    from clipad.deploy.openvino_export import ir_hashes

    ov = manifest.openvino
    assert ov is not None  # check_int8_backend refuses artifacts without an OpenVINO IR
    ov_gates: dict[OvPrecision, QualityGate] = {k: v for k, v in (ov.gates or {}).items() if k != "int8"}
    if gate is not None:
        ov_gates["int8"] = gate
    ov = ov.replace(ir={**ov.ir, "int8": OV_INT8_XML}, parity={**ov.parity, "int8": figures}, gates=ov_gates or None)
    return manifest.with_openvino(ov, ir_hashes(root))


def check_int8_backend(art: Artifacts, backend: str) -> Int8Backend:
    """``backend`` as an Int8Backend; one line when ``art`` cannot get an INT8 model for it
    (before any images are read)."""
    parse_choice(Int8Backend, backend, "--int8-backend")
    if backend == "openvino" and art.manifest.openvino is None:
        raise ClipadError(f"{art.root} has no OpenVINO IR to quantise; export with `clipad export --openvino` first")
    return cast(Int8Backend, backend)


def make_int8(
    art: Artifacts,
    images: np.ndarray,
    tasks: Tasks,
    min_agreement: float = MIN_AGREEMENT,
    gate_root: Path | None = None,
    max_auroc_drop: float = DEFAULT_MAX_DROP_POINTS,
    backend: str = "onnxruntime",
) -> tuple[ParityFigures, QualityGate | None]:
    """Quantise with ``images`` (uint8 [N, S, S, 3]) for ``backend`` (onnxruntime or openvino),
    check against its FP32 model on the export's parity images and up to 8 calibration images,
    and add it to the artifacts.

    Returns the parity figures and, with ``gate_root``, the AUROC quality gate; raises
    ClipadError (writing nothing) when the gate fails or, without one, when the top-1% pixel
    agreement is below ``min_agreement``.
    """
    target = TARGETS[check_int8_backend(art, backend)]
    gate_set = None
    if gate_root is not None:
        score = get_method(art.manifest.mode, "mode").image_score
        gate_set = gate_images(Path(gate_root), art.manifest.category, art.geometry, max_auroc_drop, score)
    with art.writing():
        entry = None
        if backend == "onnxruntime":
            art.verified_path(ONNX_FP32)  # before its sha256 is read for the record
            # Made first, so that an invalid setting (a negative agreement) is refused before any work.
            entry = onnxruntime_entry(min_agreement, art.manifest.files[ONNX_FP32])
        src = [art.verified_path(name) for name in target.sources][0]
        with tempfile.TemporaryDirectory(dir=art.root) as tmp:
            dst = Path(tmp) / target.files[-1]
            _quantise(target, src, dst, images, tasks)
            check = np.concatenate([parity_images(art.geometry, 3), images[:8]])
            with _runner(target, src, "fp32", art.max_batch) as fp32, _runner(target, dst, "int8", art.max_batch) as q:
                baseline = Baseline(check, fp32.run(check), target.against)
                judged = gate_step(
                    q,
                    baseline,
                    target.limits,
                    gate_set,
                    fp32,
                    target.against,
                    n_images=len(check),
                    calibration_images=len(images),
                )
            figures, gate = judged.figures, judged.gate
            if gate is not None:
                if not gate.passed:
                    raise ClipadError(
                        f"the {target.label} fails its quality gate: pixel AUROC drop {gate.pixel_drop_points:.2f}, "
                        f"image {gate.image_drop_points:.2f} points (> {max_auroc_drop:g}) on {gate.n_images} "
                        "labelled images: not written, keep using FP32"
                    )
            elif figures.top1pct_agreement < min_agreement:
                raise ClipadError(
                    f"the {target.label}'s top-1% pixel agreement with FP32 is {figures.top1pct_agreement:.3f} "
                    f"(< {min_agreement}; rel L2 {figures.rel_l2:.2e}): not written, keep using FP32"
                )
            for name in target.files:  # an IR's .bin first: its .xml, written last, is what a reader opens
                with atomic_path(art.root / name) as out:
                    (Path(tmp) / name).replace(out)
        art.update(_record(target, art.manifest, art.root, figures, gate, entry))
    return figures, gate
