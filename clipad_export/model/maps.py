"""Upsampling and Gaussian smoothing of patch maps, as constant matrices.

method.md sections 5 and 9: both bilinear conventions and scipy's ``gaussian_filter`` are
linear and separable, so a [g, g] patch map X becomes ``A X A^T`` at [H, H] and the blur
``G M G^T``. The matrices are built here, once, in float64 from the defining formulas, and used
by the reference and (unchanged) by the exported graph, where they are plain MatMuls.

- ``bilinear_matrix(g, H, align_corners=False)``: PyTorch's half-pixel bilinear (no antialias),
  used for the SDP map.
- ``bilinear_matrix(g, H, align_corners=True)``: used for the SDP+ head logits.
- ``gaussian_matrix(H, sigma)``: scipy.ndimage.gaussian_filter with mode='reflect' (scipy's
  half-sample *symmetric* border, edge sample repeated; not torch/ONNX "reflect"),
  truncate=4, i.e. radius int(4 sigma + 0.5), kernel exp(-x^2 / 2 sigma^2) normalised.
"""

from __future__ import annotations

import math

import numpy as np
import torch

TRUNCATE = 4.0


def bilinear_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """1-D linear interpolation as a float64 matrix [n_out, n_in] (PyTorch's source-index rule)."""
    a = np.zeros((n_out, n_in), dtype=np.float64)
    for dst in range(n_out):
        if align_corners:
            src = dst * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max((dst + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = src - i0
        a[dst, i0] += 1.0 - frac
        a[dst, i1] += frac
    return a


def gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """scipy-equivalent 1-D Gaussian filter (symmetric border, truncate 4) as float64 [n, n].

    ``sigma <= 0`` gives the identity (no smoothing).
    """
    if sigma <= 0:
        return np.eye(n)
    radius = int(TRUNCATE * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    g = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        idx = np.mod(i + offsets, 2 * n)
        idx = np.where(idx >= n, 2 * n - 1 - idx, idx)  # half-sample symmetric, period 2n
        np.add.at(g[i], idx, kernel)
    return g


def as_tensor(m: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))


def apply_separable(m: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
    """``rows @ m @ cols^T`` over the last two axes; m: [..., h, w], rows: [H, h], cols: [W, w]."""
    cols = rows if cols is None else cols
    return torch.matmul(torch.matmul(rows, m), cols.transpose(0, 1))
