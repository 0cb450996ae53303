"""From a backend's outputs to a record's scores: image_prob, map maximum and, once the
artifacts are calibrated (calibration/constants.py), the fused score, the normalised score in
[0, 1] (0.5 at the threshold), the label and the defect area of the mask."""

from __future__ import annotations

import numpy as np

from clipad.calibration.constants import Calibration
from clipad.model.fusion import map_max

__all__ = ["Calibration", "score_batch"]


def score_batch(amap: np.ndarray, prob: np.ndarray, cal: Calibration | None) -> list[dict]:
    """amap float32 [B, H, W], prob float32 [B] -> one dict per image.

    Keys: image_prob, map_max, fused, score, label ("anomalous"/"normal") and defect_area (fraction
    of pixels at or above the pixel threshold); the last four are None when uncalibrated.
    """
    maxima = map_max(amap)
    if cal is None:
        return [{"image_prob": float(p), "map_max": float(m), "fused": None, "score": None, "label": None,
                 "defect_area": None} for p, m in zip(prob, maxima)]
    fused, score, anomalous = cal.decide(prob, maxima)
    area = cal.mask(amap).reshape(len(amap), -1).mean(axis=1)
    return [{"image_prob": float(p), "map_max": float(m), "fused": float(f), "score": float(s),
             "label": "anomalous" if a else "normal", "defect_area": float(d)}
            for p, m, f, s, a, d in zip(prob, maxima, fused, score, anomalous, area)]
