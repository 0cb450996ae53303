"""The one fusion of the two image-level signals (method.md section 6).

score = minmax(image_prob) + minmax(map_max), each min-max normalised with its own range. The
official code takes the ranges over a category's whole test set (``transductive_ranges``);
calibration fixes them from calibration images instead, so a live camera can use the same
function frame by frame.

``ImageScore`` names the fusion a method uses (``clipad.methods``: ``Method.image_score``);
calibration and the runtime read it from the method the manifest records.
"""

from __future__ import annotations

import numpy as np

Range = tuple[float, float]


def map_max(amap: np.ndarray) -> np.ndarray:
    """The map-level signal m_img: max over pixels of each (smoothed) map; [N, H, W] -> [N]."""
    amap = np.asarray(amap)
    return amap.reshape(len(amap), -1).max(axis=1)


def minmax(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(x - lo) / (hi - lo); a zero-width range maps everything to 0."""
    x = np.asarray(x, dtype=np.float64)
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def fused_score(image_prob: np.ndarray, map_max: np.ndarray, prob_range: Range, max_range: Range) -> np.ndarray:
    """float64 [N] in [0, 2] within the ranges."""
    return minmax(image_prob, *prob_range) + minmax(map_max, *max_range)


def transductive_ranges(image_prob: np.ndarray, map_max: np.ndarray) -> tuple[Range, Range]:
    """The official (set-wide) ranges: (min, max) of each signal over the given images."""
    return (float(np.min(image_prob)), float(np.max(image_prob))), (float(np.min(map_max)), float(np.max(map_max)))
