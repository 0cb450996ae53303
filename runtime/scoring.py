"""From a backend's outputs to a record's scores: image_prob, map maximum, and (once the
artifacts are calibrated) the fused score and the label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipad_export.fusion import fused_score


@dataclass(frozen=True)
class Calibration:
    """Constants fixed by `clipad calibrate` (calibration issue); absent until then."""

    prob_range: tuple[float, float]
    max_range: tuple[float, float]
    threshold: float

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Calibration | None":
        c = manifest.get("calibration")
        if not c:
            return None
        return cls(tuple(c["image_prob_range"]), tuple(c["map_max_range"]), float(c["threshold"]))


def score_batch(amap: np.ndarray, prob: np.ndarray, cal: Calibration | None) -> list[dict]:
    """Per image: image_prob, map_max, score (fused, or None) and label ("anomalous"/"normal"/None)."""
    map_max = amap.reshape(len(amap), -1).max(axis=1)
    fused = fused_score(prob, map_max, cal.prob_range, cal.max_range) if cal else [None] * len(prob)
    out = []
    for p, m, s in zip(prob, map_max, fused):
        label = None if s is None else ("anomalous" if s >= cal.threshold else "normal")
        out.append({"image_prob": float(p), "map_max": float(m), "score": None if s is None else float(s), "label": label})
    return out
