"""The quality gate of a reduced precision: its AUROC drop against FP32 on labelled images.

On held-out labelled images (a `clipad synth` or MVTec-layout root, the export's category) the
FP32 model and the reduced one (ONNX Runtime's FP16 graph; OpenVINO's bf16 on model.xml and int8
on model.int8.xml) are run by ``gate_step``; the gate compares pixel AUROC (anomaly_map against the
masks, at model resolution) and image AUROC (the method's image score as `clipad eval` computes
it; SDP's: method.md section 6) and passes when neither drops by more than ``max_drop_points``
AUROC points (x100).
The map agreement figures (clipad.deploy.parity) are recorded beside it. A gate is meaningful on
a model whose maps carry signal (the normal-reference mode, or SDP+ heads trained with `clipad
train`); with random zero-shot weights it only shows that the machinery runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from clipad.core.errors import ClipadError
from clipad.data import load_batch, load_split
from clipad.data.geometry import ModelSize
from clipad.deploy.manifest import QualityGate
from clipad.deploy.parity import compare
from clipad.deploy.runners.base import Outputs
from clipad.evaluation.metrics import binary_metrics
from clipad.methods.base import ImageScore
from clipad.model.fusion import map_max, transductive_ranges

DEFAULT_MAX_DROP_POINTS = 0.5


@dataclass(frozen=True)
class GateSet:
    """Labelled held-out images and the gate's limit: images uint8 [N, S, S, 3], labels int [N]
    (1: anomalous), masks bool [N, S, S], max_drop_points (AUROC points, x100); image_score: the
    method's (``clipad.methods``: ``Method.image_score``), with the ranges over these images."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    max_drop_points: float = DEFAULT_MAX_DROP_POINTS
    image_score: ImageScore = ImageScore.PROB_PLUS_MAX


def gate_images(
    root: Path,
    category: str,
    size: ModelSize,
    max_drop_points: float = DEFAULT_MAX_DROP_POINTS,
    image_score: ImageScore = ImageScore.PROB_PLUS_MAX,
) -> GateSet:
    """The labelled test images of ``category`` under ``root`` (MVTec layout) at model size
    ``size``; one line when there are no anomalous images with masks."""
    split = load_split("mvtec", root, [category])
    skipped: list[str] = []
    images, kept, masks = load_batch(split[category], size, skipped)
    pairs = [(im, s.label, m) for im, s, m in zip(images, kept, masks, strict=False) if m is not None]
    if not pairs or not 0 < sum(p[1] for p in pairs) < len(pairs):
        raise ClipadError(f"the quality gate needs good and anomalous images with masks under {root}/{category}")
    return GateSet(
        np.stack([p[0] for p in pairs]),
        np.array([p[1] for p in pairs]),
        np.stack([p[2] for p in pairs]),
        max_drop_points,
        image_score,
    )


def _aurocs(gate: GateSet, amap: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    mmax = map_max(amap)
    pr, mr = transductive_ranges(prob, mmax)
    # gate_images holds both classes; an undefined (None) AUROC still fails in float() as before
    pixel = cast(float, binary_metrics(gate.masks, amap)["auroc"])
    image = cast(float, binary_metrics(gate.labels, gate.image_score.fuse(prob, mmax, pr, mr))["auroc"])
    return float(pixel), float(image)


def quality_gate(reference: Outputs, reduced: Outputs, gate: GateSet, against: str = "fp32") -> QualityGate:
    """Judge ``reduced`` against ``reference``: each (anomaly_map float32 [N, S, S], image_prob
    float32 [N]) on the gate images of ``gate`` (called by ``gate_step.gate_step`` only)."""
    labels, max_drop_points = gate.labels, gate.max_drop_points
    pix32, img32 = _aurocs(gate, *reference)
    pix, img = _aurocs(gate, *reduced)
    agreement = compare(reference, reduced, against)
    drops = (100 * (pix32 - pix), 100 * (img32 - img))
    return QualityGate.create(
        n_images=len(labels),
        n_anomalous=int(labels.sum()),
        pixel_auroc_fp32=pix32,
        pixel_auroc=pix,
        image_auroc_fp32=img32,
        image_auroc=img,
        pixel_drop_points=drops[0],
        image_drop_points=drops[1],
        max_drop_points=max_drop_points,
        agreement=agreement,
        passed=max(drops) <= max_drop_points,
    )


# Below this many held-out images the image half of the gate is mostly noise: on trained SDP+
# heads over a random backbone its image AUROC moved by 1-9 points on 20 and 70 images and by
# under 0.5 on 300, for the same reduced precision (docs/benchmarks.md, CPU edge tier).
MIN_GATE_IMAGES = 200


def pair_step_points(gate: QualityGate) -> float:
    """How far one reordered (good, anomalous) pair moves the image AUROC, in points."""
    return 100.0 / (gate.n_anomalous * (gate.n_images - gate.n_anomalous))


def describe_gate(name: str, gate: QualityGate) -> str:
    """One line for the user: ``name`` is what was gated (e.g. "openvino int8", "onnxruntime fp16");
    a gate on fewer than ``MIN_GATE_IMAGES`` images says how coarse its image AUROC is."""
    line = (
        f"gate {name}: pixel AUROC {100 * gate.pixel_auroc:.2f} (fp32 {100 * gate.pixel_auroc_fp32:.2f}), image AUROC "
        f"{100 * gate.image_auroc:.2f} (fp32 {100 * gate.image_auroc_fp32:.2f}), "
        f"drop <= {gate.max_drop_points:g} points: " + ("passed" if gate.passed else "FAILED")
    )
    if gate.n_images < MIN_GATE_IMAGES:
        line += (
            f" (only {gate.n_images} held-out images: one reordered pair moves the image AUROC by "
            f"{pair_step_points(gate):.2g} points; use {MIN_GATE_IMAGES}+ for a gate that decides deployments)"
        )
    return line
