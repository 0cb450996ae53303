"""The SDP+ losses against a direct per-pixel formula on small tensors."""

from __future__ import annotations

import math

import torch

from clipad.training.losses import SDPPlusLoss, dice_loss, focal_loss, sdp_plus_loss


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
    assert abs(float(focal_loss(probs[:, 1], target)) - total / n) < 1e-12


def test_dice_loss_direct_formula():
    a = torch.tensor([[[0.2, 0.9], [0.5, 0.0]], [[1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    t = torch.tensor([[[0, 1], [1, 0]], [[0, 0], [0, 0]]], dtype=torch.float64)
    d0 = (2 * (0.9 + 0.5) + 1) / ((0.2 + 0.9 + 0.5) + 2 + 1)
    d1 = (0 + 1) / (2 + 0 + 1)
    assert abs(float(dice_loss(a, t)) - (1 - (d0 + d1) / 2)) < 1e-12
    assert float(dice_loss(t, t)) < 1e-12  # perfect prediction


def test_sdp_plus_loss_is_the_sum_of_the_stage_losses():
    g = torch.Generator().manual_seed(3)
    probs = torch.rand(3, 4, 10, 10, generator=g, dtype=torch.float64)
    target = (torch.rand(3, 10, 10, generator=g) > 0.7).double()
    per_stage = sum(focal_loss(probs[:, j], target) + dice_loss(probs[:, j], target) for j in range(4))
    torch.testing.assert_close(sdp_plus_loss(probs, target), per_stage, rtol=1e-12, atol=1e-12)


def test_closed_form_loss_matches_autograd_through_the_reference():
    g = torch.Generator().manual_seed(5)
    z = (3 * torch.randn(2, 4, 12, 12, generator=g, dtype=torch.float64)).requires_grad_(True)
    target = (torch.rand(2, 12, 12, generator=g) > 0.7).double()
    ref = sdp_plus_loss(torch.sigmoid(z), target)
    (ref_grad,) = torch.autograd.grad(ref, z)
    fast = SDPPlusLoss.apply(z, target)
    (fast_grad,) = torch.autograd.grad(3.0 * fast, z)  # an upstream gradient scales it
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast_grad, 3.0 * ref_grad, rtol=1e-9, atol=1e-12)
