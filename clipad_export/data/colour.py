"""The one place where pixels change colour order or depth.

OpenCV hands over BGR (or grey, BGRA, 16-bit) frames; everything inside clipad is RGB uint8.
``to_rgb`` converts any frame OpenCV can produce; ``to_bgr`` converts back for OpenCV writers.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_rgb(frame: np.ndarray, order: str = "bgr") -> np.ndarray:
    """Any OpenCV frame -> RGB uint8 [H, W, 3].

    ``frame``: [H, W] grey, [H, W, 1], [H, W, 3] or [H, W, 4] (alpha dropped), uint8 or uint16
    (scaled by 1/257) or float in [0, 1]; ``order`` is the channel order of 3/4-channel input
    ("bgr" from OpenCV, "rgb" from PIL).
    """
    if frame.dtype == np.uint16:
        frame = (frame.astype(np.uint32) // 257).astype(np.uint8)
    elif frame.dtype != np.uint8:
        frame = np.clip(np.asarray(frame, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB if order == "bgr" else cv2.COLOR_RGBA2RGB)
    if frame.shape[2] != 3:
        raise ValueError(f"cannot convert a frame with {frame.shape[2]} channels")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if order == "bgr" else np.ascontiguousarray(frame)


def pil_to_rgb(image) -> np.ndarray:
    """A decoded PIL image (any mode) -> RGB uint8 [H, W, 3], through ``to_rgb``.

    Grey, RGB and RGBA go straight through ``to_rgb``; 16-bit and 32-bit integer greys are
    scaled as 16-bit (values clipped to 65535, then / 257); palette, LA, CMYK and the other modes
    are expanded by PIL's own conversion to RGB first (palettes become their colours, alpha is
    dropped).
    """
    if image.mode in ("L", "RGB", "RGBA"):
        return to_rgb(np.asarray(image), order="rgb")
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L, I (32-bit)
        return to_rgb(np.clip(np.asarray(image), 0, 65535).astype(np.uint16), order="rgb")
    if image.mode == "F":
        return to_rgb(np.asarray(image, dtype=np.float32), order="rgb")
    return to_rgb(np.asarray(image.convert("RGB")), order="rgb")


def to_bgr(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> BGR for OpenCV writers and windows."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
