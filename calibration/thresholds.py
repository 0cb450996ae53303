"""Threshold rules and the normalised score (pure functions on numpy arrays).

Rule for a decision: ``anomalous`` when the score is >= the threshold, for images and pixels.
"""

from __future__ import annotations

import math

import numpy as np

from clipad.core.errors import ClipadError


def min_images_for_fpr(target_fpr: float) -> int:
    """Good images needed before a false-positive rate of ``target_fpr`` can be resolved at all:
    with n images the smallest non-zero rate is 1/n, so n >= 1/target_fpr. (The estimate's
    relative spread is about 1/sqrt(n * target_fpr): ten times that many gives about +-30%.)"""
    return math.ceil(1.0 / target_fpr - 1e-9)


def fpr_threshold(good_scores: np.ndarray, target_fpr: float) -> float:
    """Threshold that flags a fraction of at most ``target_fpr`` of the good scores.

    k = floor(target_fpr * n) good scores may lie at or above it; it sits halfway between the
    k-th and (k+1)-th largest (half a gap above the maximum when k is 0), so that the rate on
    new good images is neither biased up by ties nor pinned to one sample.
    """
    s = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())[::-1]
    if s.size == 0:
        raise ClipadError("no good scores to calibrate on")
    if not 0 < target_fpr < 1:
        raise ClipadError(f"the target false-positive rate must be in (0, 1), not {target_fpr}")
    k = min(int(math.floor(target_fpr * s.size + 1e-9)), s.size - 1)
    if k == 0:
        gap = s[0] - s[1] if s.size > 1 else 0.0
        return float(s[0] + (gap / 2 if gap > 0 else max(abs(s[0]), 1.0) * 1e-6))
    return float((s[k - 1] + s[k]) / 2)


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of ``scores >= threshold`` against ``labels`` (0/1).

    The candidates are the observed scores (scikit-learn's precision-recall curve); among equal
    F1 values the lowest threshold wins. Needs both classes.
    """
    from sklearn.metrics import precision_recall_curve

    labels = np.asarray(labels).ravel().astype(int)
    if labels.min() == labels.max():
        raise ClipadError("an F1 threshold needs both good and anomalous samples")
    precision, recall, thresholds = precision_recall_curve(labels, np.asarray(scores, dtype=np.float64).ravel())
    p, r = precision[:-1], recall[:-1]
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    i = int(np.argmax(f1))
    return float(thresholds[i]), float(f1[i])


def normalised_score(fused: np.ndarray, threshold: float, score_range: tuple[float, float]) -> np.ndarray:
    """float64 [N] in [0, 1]: (fused - threshold) / (hi - lo) + 0.5, clipped; 0.5 at the threshold.

    ``score_range`` is the fused score's (min, max) over the calibration images, so one unit of
    the calibration spread maps to one unit of the normalised score (anomalib's normalisation).
    """
    lo, hi = score_range
    return np.clip((np.asarray(fused, dtype=np.float64) - threshold) / (hi - lo) + 0.5, 0.0, 1.0)
