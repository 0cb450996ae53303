"""From a backend's outputs to prediction records: image_prob, map maximum and, once the
artifacts are calibrated (``clipad.calibration.constants``), the fused score, the normalised score
in [0, 1] (0.5 at the threshold), the label and the defect area of the mask."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clipad.calibration.constants import Calibration
from clipad.model.fusion import map_max
from clipad.runtime.records import Prediction

NON_FINITE = "the model gave NaN or infinite values"


def score_batch(
    amap: np.ndarray, prob: np.ndarray, cal: Calibration | None, sources: Sequence[str]
) -> list[Prediction]:
    """amap float32 [B, H, W], prob float32 [B], one source name per image -> one Prediction each.

    An image whose map or probability holds a NaN or an infinity fails closed: label "error",
    never "normal" (a NaN compares false with every threshold)."""
    finite = np.isfinite(prob) & np.isfinite(amap.reshape(len(amap), -1)).all(axis=1)
    maxima = map_max(amap)
    if cal is None:
        preds = [Prediction(src, float(p), float(m)) for src, p, m in zip(sources, prob, maxima, strict=False)]
    else:
        fused, score, anomalous = cal.decide(prob, maxima)
        area = cal.mask(amap).reshape(len(amap), -1).mean(axis=1)
        preds = [
            Prediction(src, float(p), float(m), float(f), float(s), "anomalous" if a else "normal", float(d))
            for src, p, m, f, s, a, d in zip(sources, prob, maxima, fused, score, anomalous, area, strict=False)
        ]
    return [p if ok else Prediction.failed(p.source, NON_FINITE) for p, ok in zip(preds, finite, strict=False)]
