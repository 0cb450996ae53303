"""Metrics against independent formulas and scikit-learn; AUPRO on hand-built masks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from clipad.evaluation.metrics import aupro, binary_metrics, mean_of, pixel_metrics
from clipad.model.fusion import fused_score, minmax, transductive_ranges


def brute_f1_max(labels, scores):
    best = 0.0
    for t in np.unique(scores):
        best = max(best, f1_score(labels, scores >= t))
    return best


def mann_whitney_auroc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def test_binary_metrics_against_independent_computations():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(labels * 0.6 + rng.normal(size=200), 1)  # rounding makes ties
    m = binary_metrics(labels, scores)
    assert m["auroc"] == pytest.approx(mann_whitney_auroc(labels, scores), abs=1e-12)
    assert m["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert m["f1_max"] == pytest.approx(brute_f1_max(labels, scores), abs=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(labels, scores))


def test_single_class_is_undefined():
    assert binary_metrics(np.zeros(5), np.arange(5.0)) == {"auroc": None, "f1_max": None, "ap": None}


def test_aupro_perfect_and_inverted():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 5:8, 4:6] = True
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    # anomalies scored lowest: PRO stays 0 until FPR reaches 1
    assert aupro(masks, 1.0 - masks) == pytest.approx(0.0)


def test_aupro_two_regions_known_answer():
    """Region A scored 1, region B tied with the background at 0. The curve is (0,0) -> (0,0.5)
    -> (1,1); PRO at FPR 0.3 is 0.65, the area up to 0.3 is 0.3 * (0.5 + 0.65) / 2, / 0.3 -> 0.575."""
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 0:2, 0:2] = True  # A: 4 px
    masks[0, 6:9, 6:9] = True  # B: 9 px (region size must not matter)
    maps = np.zeros((1, 10, 10))
    maps[0, 0:2, 0:2] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.575)


def test_aupro_regions_are_eight_connected():
    """A 2x2 and a 3x3 square touching at a corner are one 13-pixel region. Scoring only the
    2x2 gives PRO 4/13 at FPR 0 (with 4-connectivity it would be 0.5: one of two regions)."""
    masks = np.zeros((1, 8, 8), bool)
    masks[0, 0:2, 0:2] = True
    masks[0, 2:5, 2:5] = True
    maps = np.zeros((1, 8, 8))
    maps[0, 0:2, 0:2] = 1.0
    p0 = 4 / 13
    p_at_limit = p0 + (1 - p0) * 0.3
    assert aupro(masks, maps) == pytest.approx((p0 + p_at_limit) / 2)


def test_aupro_partial_fpr():
    """Background pixels partly above the region's score: PRO jumps to 1 at FPR 0.1."""
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 0, 0:4] = True  # 4 region pixels, 96 background
    maps = np.zeros((1, 10, 10))
    maps[0, 0, 0:4] = 0.5
    maps.reshape(-1)[-24:] = 1.0  # 24 background pixels above the region: FPR 0.25 at PRO 0
    # curve (0,0) -> (0.25,0) -> (0.25,1) -> (1,1); area to 0.3 = 0.05 -> / 0.3
    assert aupro(masks, maps) == pytest.approx(0.05 / 0.3)


def test_pixel_metrics_flattens_all_images():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 6, 6)) > 0.8
    maps = masks * 0.5 + rng.random((3, 6, 6))
    m = pixel_metrics(masks, maps)
    assert m["auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert 0 < m["aupro"] <= 1


def test_mean_of_skips_undefined():
    assert mean_of([{"a": 0.5, "b": None}, {"a": 1.0, "b": None}]) == {"a": 0.75, "b": None}


def test_fusion_is_sum_of_minmax():
    p = np.array([0.2, 0.4, 0.6])
    m = np.array([3.0, 1.0, 2.0])
    pr, mr = transductive_ranges(p, m)
    np.testing.assert_allclose(fused_score(p, m, pr, mr), [0.0 + 1.0, 0.5 + 0.0, 1.0 + 0.5])
    assert np.all(minmax(np.ones(3), 1.0, 1.0) == 0)
