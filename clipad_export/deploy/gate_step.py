"""The one gate step of a reduced precision (the export's FP16 graph, `clipad calibrate --int8`,
OpenVINO's bf16/fp16/int8): run the candidate through its runner, compare it with its baseline
(``parity.compare``), and, where labelled gate images are given, run the FP32 model and the
candidate on them and judge the AUROC drop (``quality_gate.quality_gate``). The caller records
the result in the manifest and decides what a failure means (drop, refuse, warn)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clipad.deploy.manifest import ParityFigures, QualityGate
from clipad.deploy.parity import compare
from clipad.deploy.quality_gate import GateSet, quality_gate
from clipad.deploy.runners.base import Outputs, Runner


@dataclass(frozen=True)
class Baseline:
    """What a candidate's figures are measured against: ``images`` uint8 [N, S, S, 3], the
    baseline's ``outputs`` on them (anomaly_map [N, S, S], image_prob [N]), what it is
    (``against``), and the frames per call it ran them at (``batch``; None: the runner's max)."""

    images: np.ndarray
    outputs: Outputs
    against: str
    batch: int | None = None


@dataclass(frozen=True)
class Judged:
    """A candidate's figures against its baseline, its outputs on the baseline's images, and its
    AUROC quality gate (None without gate images)."""

    figures: ParityFigures
    outputs: Outputs
    gate: QualityGate | None


def gate_step(
    candidate: Runner,
    baseline: Baseline,
    limits: str | None = None,
    gate: GateSet | None = None,
    fp32: Runner | None = None,
    gate_against: str = "fp32",
    **provenance: Any,
) -> Judged:
    """``candidate`` on the baseline's images, compared (``limits``: the precision whose
    tolerances list the ``violations``; ``provenance``: the figures' other keys); with ``gate``,
    ``fp32`` (the FP32 model, named ``gate_against``) and the candidate on the gate images,
    judged by the quality gate."""
    outputs = candidate.run(baseline.images, baseline.batch)
    figures = compare(baseline.outputs, outputs, baseline.against, limits, **provenance)
    judged = None
    if gate is not None:
        assert fp32 is not None, "a quality gate needs the FP32 model"
        judged = quality_gate(fp32.run(gate.images), candidate.run(gate.images), gate, gate_against)
    return Judged(figures, outputs, judged)
