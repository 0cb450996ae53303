"""SDP+ training losses, as the official recipe computes them (method.md section 7.3).

- Focal: alpha 1 on both classes, gamma 2; the one-hot target is clamped to [1e-5, 1 - 1e-5];
  pt = sum_k onehot_k P_k + 1e-5; per-pixel -(1 - pt)^2 log(pt), averaged over all pixels.
  (The paper's Eq. 14 with alpha = 1 would zero the normal class; the code weights both.)
- Dice on the anomaly channel, per image: d_b = (2 sum(A G) + 1) / (sum A + sum G + 1);
  loss = 1 - mean_b d_b.
"""

from __future__ import annotations

import torch

SMOOTH = 1e-5


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """probs: float [B, 2, H, W] (softmax over dim 1); target: {0, 1} [B, H, W] -> scalar."""
    onehot = torch.stack([1 - target, target], dim=1).to(probs.dtype).clamp(SMOOTH, 1 - SMOOTH)
    pt = (onehot * probs).sum(dim=1) + SMOOTH
    return (-(1 - pt) ** gamma * pt.log()).mean()


def dice_loss(anomaly: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """anomaly: float [B, H, W] in [0, 1]; target: {0, 1} [B, H, W] -> scalar."""
    a = anomaly.flatten(1)
    g = target.flatten(1).to(a.dtype)
    d = (2 * (a * g).sum(1) + 1) / (a.sum(1) + g.sum(1) + 1)
    return 1 - d.mean()
