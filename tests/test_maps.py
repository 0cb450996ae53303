"""Upsampling and blur matrices against PyTorch's interpolate and scipy's gaussian_filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from clipad.model.maps import apply_separable, as_tensor, bilinear_matrix, gaussian_matrix


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("g,n", [(15, 240), (6, 96), (4, 7)])
def test_bilinear_matrix_matches_interpolate(g, n, align_corners):
    x = torch.randn(3, 1, g, g, dtype=torch.float64)
    ref = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=align_corners)[:, 0]
    a = torch.from_numpy(bilinear_matrix(g, n, align_corners))
    torch.testing.assert_close(apply_separable(x[:, 0], a), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sigma,n", [(8.0, 240), (2.0, 240), (8.0, 20), (4.0, 9), (0.7, 31)])
def test_gaussian_matrix_matches_scipy(sigma, n):
    """Includes radius > n (multiple reflections) and a non-integer radius rounding case."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=(n, n))
    ref = gaussian_filter(m, sigma=sigma, mode="reflect", truncate=4.0)
    g = gaussian_matrix(n, sigma)
    np.testing.assert_allclose(g @ m @ g.T, ref, rtol=1e-10, atol=1e-12)


def test_zero_sigma_is_identity():
    assert np.array_equal(gaussian_matrix(5, 0.0), np.eye(5))


def test_float32_upsample_then_blur_matches_reference_pipeline():
    """The fused K = G A used by SDP, in float32, against interpolate + scipy on float32 maps."""
    g, n, sigma = 15, 240, 8.0
    x = torch.randn(2, 1, g, g)
    up = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False)[:, 0].numpy()
    ref = np.stack([gaussian_filter(m, sigma=sigma) for m in up])
    k = as_tensor(gaussian_matrix(n, sigma) @ bilinear_matrix(g, n, False))
    ours = apply_separable(x[:, 0], k).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
