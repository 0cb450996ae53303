"""Heatmap overlay on the original frame geometry."""

from __future__ import annotations

import cv2
import numpy as np

from clipad.data.colour import to_rgb


def map_to_frame(amap: np.ndarray, height: int, width: int) -> np.ndarray:
    """Model-resolution map float32 [h, w] -> the frame's geometry [height, width] (bilinear)."""
    return cv2.resize(amap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def overlay(frame: np.ndarray, amap: np.ndarray, lo: float, hi: float, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 [H, W, 3] frame blended with a JET heatmap of ``amap`` scaled from [lo, hi]."""
    h, w = frame.shape[:2]
    m = map_to_frame(amap, h, w)
    scaled = np.clip((m - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(m)
    heat = to_rgb(cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET))
    return cv2.addWeighted(frame, 1 - alpha, heat, alpha, 0)


def put_label(img: np.ndarray, text: str) -> np.ndarray:
    """``text`` in the top-left corner, sized to the frame's width."""
    out = img.copy()
    scale = max(0.3, min(1.0, img.shape[1] / 900))
    y = int(8 + 22 * scale)
    cv2.putText(out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, (6, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out
