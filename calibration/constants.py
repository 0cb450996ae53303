"""The calibration constants as the manifest stores them (``Manifest.calibration``, a
``CalibrationEntry``), and the one place that turns a backend's outputs into a decision with them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from clipad.calibration.thresholds import normalised_score
from clipad.core.errors import ClipadError
from clipad.deploy.manifest import CALIBRATION_VERSION, ONNX_FP32, TEXT_FEATURES, Manifest
from clipad.methods.base import ImageScore
from clipad.methods.registry import get_method
from clipad.model.fusion import Range

__all__ = ["CALIBRATION_VERSION", "MODEL_FILES", "Calibration"]

# The files whose content the constants depend on: the graph (ViT, heads, blur) and the text vectors.
MODEL_FILES = (ONNX_FP32, TEXT_FEATURES)


@dataclass(frozen=True)
class Calibration:
    """Per-category constants fixed by `clipad calibrate`.

    prob_range / max_range: (min, max) of image_prob and of the map maximum over the calibration
    images (the paper's set-wide min-max, made inductive, method.md section 6); threshold: on the
    fused score; score_range: the fused score's (min, max) there, for the normalised score;
    pixel_threshold: on anomaly_map values, for masks; image_score: how the method fuses
    image_prob and the map maximum (``clipad.methods``: ``Method.image_score``, read from the
    manifest's method).
    """

    prob_range: Range
    max_range: Range
    threshold: float
    score_range: Range
    pixel_threshold: float
    image_score: ImageScore

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Calibration | None:
        """The constants, or None when uncalibrated; a ClipadError when they belong to another
        model or have another format version."""
        c = manifest.calibration
        if c is None:
            return None
        changed = [n for n in MODEL_FILES if c.model_files.get(n) != manifest.files.get(n)]
        if changed:
            raise ClipadError(
                f"the calibration constants were made for another model ({', '.join(changed)} changed since "
                "calibration): run `clipad calibrate` again"
            )
        # the manifest validates each range as exactly two numbers
        return cls(
            cast(Range, tuple(c.image_prob_range)),
            cast(Range, tuple(c.map_max_range)),
            c.threshold,
            cast(Range, tuple(c.score_range)),
            c.pixel_threshold,
            get_method(manifest.mode, "mode").image_score,
        )

    def fused(self, image_prob: np.ndarray, map_max: np.ndarray) -> np.ndarray:
        """float64 [N]: the method's image score with the calibrated ranges (SDP, SDP+ and the
        reference mode: the paper's fusion, method.md section 6)."""
        return self.image_score.fuse(image_prob, map_max, self.prob_range, self.max_range)

    def decide(self, image_prob: np.ndarray, map_max: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(fused float64 [N], normalised score float64 [N] in [0, 1], anomalous bool [N]).

        The label compares the fused score with the threshold itself (normalised >= 0.5 up to rounding).
        """
        fused = self.fused(image_prob, map_max)
        return fused, normalised_score(fused, self.threshold, self.score_range), fused >= self.threshold

    def mask(self, amap: np.ndarray) -> np.ndarray:
        """bool [..., H, W]: pixels at or above the pixel threshold."""
        return np.asarray(amap) >= self.pixel_threshold

    def mask_image(self, amap: np.ndarray) -> np.ndarray:
        """uint8 [H, W], 255 where defect: the mask as predict and snapshots save it."""
        return self.mask(amap).astype(np.uint8) * 255
