"""Image and pixel metrics (method.md section 8), computed per category.

AUROC and AP are scikit-learn's; F1-max is the maximum finite F1 over every threshold of
``precision_recall_curve``, as the official code does. AUPRO is the standard AUPRO@0.3: the
per-region overlap (regions = 8-connected components of each ground-truth mask, averaged over
all regions of all images) integrated over FPR in [0, 0.3] and divided by 0.3. The official
code prints 0 for PRO, and its unused routine min-max rescales the FPR axis instead of dividing
by 0.3 (method.md section 8), so PRO figures here are not comparable with that routine.

A metric that is undefined for the data (one class only) is returned as None.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


def _two_classes(labels: np.ndarray) -> bool:
    return 0 < int(labels.sum()) < labels.size


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.max(f1[np.isfinite(f1)]))


def binary_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """AUROC, F1-max and AP of scores against 0/1 labels (any shape; flattened)."""
    labels = np.asarray(labels).ravel().astype(np.uint8)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if not _two_classes(labels):
        return {"auroc": None, "f1_max": None, "ap": None}
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "f1_max": f1_max(labels, scores),
        "ap": float(average_precision_score(labels, scores)),
    }


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float | None:
    """Area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit.

    masks: bool [N, H, W]; maps: float [N, H, W]. The curve is exact: every distinct score is
    a threshold (pixels with equal scores enter together), and the last segment is cut by
    linear interpolation at ``fpr_limit``.
    """
    masks = np.asarray(masks, dtype=bool)
    scores = np.asarray(maps, dtype=np.float64).ravel()
    region_ids: npt.NDArray[np.int64] = np.zeros(masks.shape, dtype=np.int64)
    n_regions = 0
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=EIGHT_CONNECTED)
        region_ids[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += n
    region_ids = region_ids.ravel()
    n_neg = int((region_ids == 0).sum())
    if n_regions == 0 or n_neg == 0:
        return None
    sizes = np.bincount(region_ids, minlength=n_regions + 1).astype(np.float64)
    # Each pixel's contribution when it crosses the threshold: to FPR if normal, to PRO if in
    # a region (1 / (n_regions * region size), so a whole region adds 1 / n_regions).
    fpr_step = np.where(region_ids == 0, 1.0 / n_neg, 0.0)
    pro_step = np.where(region_ids > 0, 1.0 / (n_regions * sizes[region_ids]), 0.0)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    fpr = np.cumsum(fpr_step[order])
    pro = np.cumsum(pro_step[order])
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    fpr = np.r_[0.0, fpr[last_of_tie]]
    pro = np.r_[0.0, pro[last_of_tie]]
    keep = fpr <= fpr_limit
    f, p = fpr[keep], pro[keep]
    if f[-1] < fpr_limit:  # interpolate the curve at the limit
        j = int(np.searchsorted(fpr, fpr_limit))
        t = (fpr_limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
        f = np.r_[f, fpr_limit]
        p = np.r_[p, pro[j - 1] + t * (pro[j] - pro[j - 1])]
    return float(np.trapezoid(p, f) / fpr_limit)


def pixel_metrics(masks: np.ndarray, maps: np.ndarray) -> dict[str, float | None]:
    """AUROC, F1-max, AP over all pixels and AUPRO@0.3; masks bool [N, H, W], maps float [N, H, W]."""
    out = binary_metrics(masks, maps)
    out["aupro"] = aupro(masks, maps) if out["auroc"] is not None else None
    return out


def mean_of(results: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Unweighted mean over categories, per metric, skipping undefined values."""
    keys = results[0].keys() if results else []
    out: dict[str, float | None] = {}
    for k in keys:
        vals = [v for r in results if (v := r.get(k)) is not None]
        out[k] = float(np.mean(vals)) if vals else None
    return out
