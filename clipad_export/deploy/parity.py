"""Comparing a model's outputs with the PyTorch reference's: the figures, their limits and the
inputs (written once; used by export, the INT8 graph, `clipad parity` and `clipad bench`).

Figures per comparison: max abs error and relative L2 error of anomaly_map, max abs error of
image_prob, and the agreement of the top-1% most anomalous pixels (|top_ref & top_other| / k
per image, averaged). Inputs are deterministic: synthetic parts with pasted defects, so the
maps have structure, plus one noise image.

``run_graph`` runs a graph file with ONNX Runtime on the CPU where no artifact directory exists
yet (the export's parity, the INT8 gate). Opening backends and comparing them with the reference
(`clipad parity`) is the runtime's job: ``clipad.runtime.parity``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from clipad.data.images import model_batch
from clipad.data.synth import sample_images

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


@dataclass(frozen=True)
class Comparison:
    """The four figures of one comparison. max_abs and rel_l2: anomaly_map (map units, and a
    fraction of the reference map's L2 norm); prob_max_abs: image_prob (probability units);
    top1pct_agreement: fraction in [0, 1]. The manifest's record of a graph's parity
    (``clipad.deploy.manifest.ParityFigures``) is these figures plus what they were measured against."""

    max_abs: float
    rel_l2: float
    prob_max_abs: float
    top1pct_agreement: float

    def to_json(self) -> dict[str, float]:
        """The manifest's and `clipad parity --json`'s keys, in this order."""
        return asdict(self)

    def within(self, precision: str) -> bool | None:
        """Inside ``TOLERANCES[precision]``; None where no limit is defined for the precision."""
        return None if precision not in TOLERANCES else not violations(self.to_json(), precision)


def measure(ref_map: np.ndarray, ref_prob: np.ndarray, amap: np.ndarray, prob: np.ndarray) -> Comparison:
    """ref_map, amap: [B, H, W]; ref_prob, prob: [B] -> the four figures (computed in float64)."""
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
    return Comparison(
        max_abs=float(np.abs(m - r).max()),
        rel_l2=float(np.linalg.norm(m - r) / max(float(np.linalg.norm(r)), 1e-30)),
        prob_max_abs=float(np.abs(np.asarray(prob, np.float64) - np.asarray(ref_prob, np.float64)).max()),
        top1pct_agreement=float(np.mean(agree)),
    )


def compare(ref_map: np.ndarray, ref_prob: np.ndarray, amap: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """``measure`` as a plain dict, for callers that add their own keys before writing the manifest."""
    return measure(ref_map, ref_prob, amap, prob).to_json()


def violations(figures: Mapping[str, float], precision: str) -> list[str]:
    """Human-readable list of the tolerances ``figures`` break (empty when within)."""
    tol = TOLERANCES[precision]
    out = []
    for key in ("rel_l2", "prob_max_abs"):
        if not figures[key] <= tol[key]:
            out.append(f"{key} {figures[key]:.2e} > {tol[key]:.0e}")
    if not figures["top1pct_agreement"] >= tol["top1pct_agreement"]:
        out.append(f"top-1% agreement {figures['top1pct_agreement']:.3f} < {tol['top1pct_agreement']}")
    return out


def parity_images(size: int, n: int = 3, seed: int = 0) -> np.ndarray:
    """Deterministic uint8 RGB [n, size, size, 3] (n >= 2): synthetic parts with defects, then noise."""
    parts = model_batch(sample_images(n - 1, seed=seed), size)
    noise = np.random.default_rng(seed).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    return np.concatenate([parts, noise])


def run_graph(path: str | Path, images: np.ndarray, max_batch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run a graph file with ONNX Runtime on the CPU, in batches of ``max_batch`` (all at once when
    None): uint8 [N, S, S, 3] -> (anomaly_map float32 [N, S, S], image_prob float32 [N]). Used where
    no artifact directory exists yet (export parity, the INT8 gate); serving uses the backends."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    step = max_batch or max(len(images), 1)
    maps, probs = [], []
    for i in range(0, len(images), step):
        amap, prob = session.run(None, {"image": images[i : i + step]})
        maps.append(amap)
        probs.append(prob)
    return np.concatenate(maps), np.concatenate(probs)
