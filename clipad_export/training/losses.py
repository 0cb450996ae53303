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


def focal_loss(anomaly: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """anomaly: float [..., H, W], the anomaly channel of the two-way softmax (the normal channel
    is 1 - anomaly); target: {0, 1}, broadcastable to ``anomaly`` -> scalar mean over all pixels.
    Gamma is 2, as the recipe fixes it.

    With one-hot o1 = clamp(target) and o0 = 1 - o1, the recipe's pt = o0 (1 - A) + o1 A + 1e-5
    is computed as (o0 + 1e-5) + (2 o1 - 1) A: one fused multiply-add on the large tensor.
    """
    o1 = target.to(anomaly.dtype).clamp(SMOOTH, 1 - SMOOTH)
    pt = torch.addcmul((1 - o1) + SMOOTH, 2 * o1 - 1, anomaly)
    return -((1 - pt).square() * pt.log()).mean()


def dice_loss(anomaly: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """anomaly: float [..., H, W] in [0, 1]; target: {0, 1}, broadcastable -> scalar.

    d = (2 sum(A G) + 1) / (sum A + sum G + 1) per map (the sums run over H and W); 1 - mean d.
    """
    g = target.to(anomaly.dtype)
    inter = (anomaly * g).sum((-2, -1))
    d = (2 * inter + 1) / (anomaly.sum((-2, -1)) + g.sum((-2, -1)) + 1)
    return 1 - d.mean()


def sdp_plus_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over stages of focal (two-channel) + dice (anomaly channel); probs [B, 4, S, S], target [B, S, S].

    The reference form (training uses SDPPlusLoss below, its closed-form-gradient twin). Computed for
    all stages at once: both losses are means over equally sized groups (pixels; images), so
    n_stages times the loss over the stacked stages is the sum of the stage losses.
    """
    t = target[:, None]
    return probs.shape[1] * (focal_loss(probs, t) + dice_loss(probs, t))


class SDPPlusLoss(torch.autograd.Function):
    """The summed SDP+ training loss from the stage logits, with its gradient in closed form.

    z: float [B, n, H, W], the upsampled logit differences (A = sigmoid(z) is the two-way softmax's
    anomaly channel); target: {0, 1} [B, H, W]. The value is sum over stages of focal_loss + dice_loss
    on A. Autograd through those two would keep ~20 intermediate maps and replay them backwards;
    here one pass computes the value and dL/dz (both in float32, also under autocast):

        dL/dA = c1 f'(pt) / (B H W) - (2 G - d) / (B (sum A + sum G + 1)),   dL/dz = dL/dA A (1 - A)

    with pt = c0 + c1 A, f(pt) = -(1 - pt)^2 log pt, f'(pt) = 2 (1 - pt) log pt - (1 - pt)^2 / pt
    and d the per-map dice coefficient. Tested against autograd through the reference formulas.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, n, h, w = z.shape
        g = target[:, None].to(z.dtype)
        o1 = g.clamp(SMOOTH, 1 - SMOOTH)
        c1 = 2 * o1 - 1
        a = torch.sigmoid(z)
        pt = torch.addcmul((1 - o1) + SMOOTH, c1, a)
        # In place where possible: on CPU each fresh map-sized buffer costs more than the arithmetic.
        lp, q = pt.log(), torch.rsub(pt, 1)
        qq = q.square()
        focal = -torch.dot(qq.flatten(), lp.flatten()) / (b * h * w)  # n stage means, summed
        den = a.sum((-2, -1)) + g.sum((-2, -1)) + 1
        d = (2 * torch.einsum("bnhw,bxhw->bn", a, g) + 1) / den
        dice = n - d.sum() / b
        grad = lp.mul_(q).mul_(2).sub_(qq.div_(pt)).mul_(c1).div_(b * h * w)  # c1 f'(pt) / (B H W)
        grad.sub_((2 * g - d[..., None, None]).div_(b * den[..., None, None]))
        grad.mul_(torch.addcmul(a, a, a, value=-1))  # A (1 - A)
        ctx.save_for_backward(grad)
        return focal + dice

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out: torch.Tensor):
        (grad_z,) = ctx.saved_tensors
        return grad_out * grad_z, None
