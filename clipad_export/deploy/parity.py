"""Comparing a model's outputs with the PyTorch reference's: the figures, their limits and the
inputs (written once; used by export, the INT8 graph, `clipad parity` and `clipad bench`).

Figures per comparison: max abs error and relative L2 error of anomaly_map, max abs error of
image_prob, and the agreement of the top-1% most anomalous pixels (|top_ref & top_other| / k
per image, averaged). Inputs are deterministic: synthetic parts with pasted defects, so the
maps have structure, plus one noise image.

The figures are one record, ``manifest.ParityFigures``, whoever compares: export, INT8,
OpenVINO, the quality gates (``gate_step``), `clipad parity` and `clipad bench`
(``clipad.runtime.parity``). Models are run by ``clipad.deploy.runners``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clipad.data.geometry import ModelSize, geometry
from clipad.data.images import model_batch
from clipad.data.synth import sample_images
from clipad.deploy.manifest import ParityFigures
from clipad.deploy.runners.base import Outputs

# Export fails when a graph exceeds these (the FP32 graph against the PyTorch reference; the
# FP16 graph against the FP32 graph). FP32: float32 reassociation in ONNX Runtime's fused
# kernels gives ~1e-6..1e-5 relative error on the maps (which are differences of cosines), so
# the bar is 1e-4: far below any real defect of the graph, which shows as O(1).
TOLERANCES = {
    "fp32": {"rel_l2": 1e-4, "prob_max_abs": 1e-4, "top1pct_agreement": 0.99},
    "fp16": {"rel_l2": 1e-2, "prob_max_abs": 2e-3, "top1pct_agreement": 0.95},
    # BF16 (OpenVINO, 8 mantissa bits against FP16's 11) is recorded against the FP16 limits; with
    # random weights it misses them (maps are differences of nearly parallel text vectors), so
    # its real judge is the AUROC quality gate on a trained SDP+ model.
    "bf16": {"rel_l2": 1e-2, "prob_max_abs": 2e-3, "top1pct_agreement": 0.95},
    # INT8 (calibration/int8.py) is gated on agreement; the two error bounds only catch a
    # broken graph, whose errors are O(1).
    "int8": {"rel_l2": 0.25, "prob_max_abs": 0.25, "top1pct_agreement": 0.9},
}


def compare(
    reference: Outputs,
    candidate: Outputs,
    against: str,
    limits: str | None = None,
    **provenance: Any,
) -> ParityFigures:
    """The one comparison: ``candidate`` against ``reference`` (each anomaly_map [B, H, W] and
    image_prob [B]; computed in float64), measured against what ``against`` names. ``limits``: the
    precision whose ``TOLERANCES`` judge the figures (their ``violations`` listed; None: not
    judged); ``provenance``: the record's other keys (inputs, n_images, batch1_rel_l2, ...)."""
    (ref_map, ref_prob), (amap, prob) = reference, candidate
    r = np.asarray(ref_map, dtype=np.float64)
    m = np.asarray(amap, dtype=np.float64)
    if r.shape != m.shape:
        raise ValueError(f"anomaly_map shapes differ: {r.shape} vs {m.shape}")
    k = max(1, int(round(0.01 * r[0].size)))
    agree = []
    for a, b in zip(r.reshape(len(r), -1), m.reshape(len(m), -1), strict=False):
        top_a = np.argpartition(-a, k - 1)[:k]
        top_b = np.argpartition(-b, k - 1)[:k]
        agree.append(len(np.intersect1d(top_a, top_b)) / k)
    figures = ParityFigures.create(
        max_abs=float(np.abs(m - r).max()),
        rel_l2=float(np.linalg.norm(m - r) / max(float(np.linalg.norm(r)), 1e-30)),
        prob_max_abs=float(np.abs(np.asarray(prob, np.float64) - np.asarray(ref_prob, np.float64)).max()),
        top1pct_agreement=float(np.mean(agree)),
        against=against,
        **provenance,
    )
    return figures if limits is None else figures.replace(violations=violations(figures, limits))


def violations(figures: ParityFigures, precision: str) -> list[str]:
    """Human-readable list of the tolerances ``figures`` break (empty when within)."""
    tol = TOLERANCES[precision]
    out = []
    for key in ("rel_l2", "prob_max_abs"):
        if not getattr(figures, key) <= tol[key]:
            out.append(f"{key} {getattr(figures, key):.2e} > {tol[key]:.0e}")
    if not figures.top1pct_agreement >= tol["top1pct_agreement"]:
        out.append(f"top-1% agreement {figures.top1pct_agreement:.3f} < {tol['top1pct_agreement']}")
    return out


def parity_images(size: ModelSize, n: int = 3, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 RGB [n, H, W, 3] (n >= 2) fitted to ``size``: synthetic parts with
    defects, then noise."""
    parts = model_batch(sample_images(n - 1, seed=seed), size)
    noise = np.random.default_rng(seed).integers(0, 256, (1, *geometry(size).hw, 3), dtype=np.uint8)
    return np.concatenate([parts, noise])
