"""The SDP+ losses against a direct per-pixel formula on small tensors."""

from __future__ import annotations

import math

import torch

from clipad_export.losses import dice_loss, focal_loss


def test_focal_loss_direct_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 3, 4, generator=g, dtype=torch.float64)
    probs = torch.softmax(logits, dim=1)
    target = (torch.rand(2, 3, 4, generator=g) > 0.6).double()
    total, n = 0.0, 0
    for b in range(2):
        for i in range(3):
            for j in range(4):
                t = float(target[b, i, j])
                oh = [min(max(1 - t, 1e-5), 1 - 1e-5), min(max(t, 1e-5), 1 - 1e-5)]
                pt = oh[0] * float(probs[b, 0, i, j]) + oh[1] * float(probs[b, 1, i, j]) + 1e-5
                total += -((1 - pt) ** 2) * math.log(pt)
                n += 1
    assert abs(float(focal_loss(probs, target)) - total / n) < 1e-12


def test_dice_loss_direct_formula():
    a = torch.tensor([[[0.2, 0.9], [0.5, 0.0]], [[1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    t = torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]], dtype=torch.float64)
    d0 = (2 * (0.9 + 0.5) + 1) / ((0.2 + 0.9 + 0.5) + 2 + 1)
    d1 = (0 + 1) / (2 + 0 + 1)
    assert abs(float(dice_loss(a, t)) - (1 - (d0 + d1) / 2)) < 1e-12
    assert float(dice_loss(t, t)) < 1e-12  # perfect prediction
