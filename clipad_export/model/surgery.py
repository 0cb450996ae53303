"""The staged dual-path ViT forward (SDP's "architecture surgery"), as explicit tensor ops.

method.md section 4. Every block computes, from LN1 of the *original* residual stream:
- the original attention, softmax(q k^T / sqrt(d_h)) v, out-projection, residual, then MLP;
- the V-V attention, softmax(v v^T / sqrt(d_h)) v per head (same scale, v with its in_proj
  bias), out-projection *with* bias; no LN2, no FFN, no residual.

The V-V outputs accumulate into the surgery path S, which is reset at the first block of each
of 4 stages (blocks 1, 4, 7, 10 of a 12-block ViT), so stage j is the sum of its blocks' V-V
outputs (section 4.3). The taps are the ones the official code really returns (section 4.4):
because of an in-place update, the "original" features of stages 1-3 are X_mid (residual
after the attention sub-layer, before the MLP) of the *first block of the next stage*, and of
stage 4 the final X_L. Each stage's surgery tokens get their cls row from that tap, then the
shared final ln_post and projection (section 4.5).

No module swapping, no in-place ops, no data-dependent control flow: it traces to ONNX with a
dynamic batch dimension.

Attention runs in two forms with the same mathematics: in eager PyTorch through the fused
``scaled_dot_product_attention`` (one kernel, no [B, heads, T, T] logits in memory; V-V
attention is the call with q = k = v), and as the explicit MatMul, scale and Softmax while the
model is traced for ONNX export, so that the exported graph keeps its Softmax nodes with their
logit MatMuls, which the FP16/BF16/INT8 precisions keep in FP32 (clipad.deploy.fp16).
``DualPathViT.fused`` False forces the explicit form in eager mode too (for comparison).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

N_STAGES = 4


class Taps(NamedTuple):
    """Per-stage features of a batch.

    surgery: float32 [B, 4, T, D] - stage surgery tokens after ln_post and proj (T = 1 + patches,
             D = embed dim); ``surgery[:, 3, 0]`` is the standard CLIP image embedding.
    ori:     float32 [B, 4, T, W] - raw residual-stream taps (W = width), no LayerNorm.
    """

    surgery: torch.Tensor
    ori: torch.Tensor


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, W] -> [B, heads, T, W // heads]."""
    b, t, w = x.shape
    return x.reshape(b, t, heads, w // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, d_h] -> [B, T, heads * d_h]."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def tracing() -> bool:
    """Whether the forward is being traced (ONNX export or torch.jit.trace): the explicit form then."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, fused: bool = False) -> torch.Tensor:
    """softmax(q k^T * scale) v per head; q, k, v: [B, heads, T, d_h] -> [B, heads, T, d_h].

    ``fused``: through ``scaled_dot_product_attention`` (same scale passed explicitly, no mask,
    no dropout), unless the forward is being traced, where the explicit form is always used.
    """
    if fused and not tracing():
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1).matmul(v)


def vv_attention(v: torch.Tensor, scale: float, fused: bool = False) -> torch.Tensor:
    """The surgery path's V-V self-attention: softmax(v v^T * scale) v per head (method.md 4.2),
    with the original attention's scale 1/sqrt(d_h)."""
    return attention(v, v, v, scale, fused)


class DualPathViT(nn.Module):
    """Wraps an open_clip ``VisionTransformer`` (weights shared, not copied) and returns the taps."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if blocks is None or not hasattr(visual, "conv1"):
            raise ValueError("SDP needs an open_clip VisionTransformer (ViT); this model's visual tower is not one")
        if len(blocks) % N_STAGES:
            raise ValueError(f"SDP needs a block count divisible by {N_STAGES}, got {len(blocks)}")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
            raise ValueError("SDP supports ViTs with token pooling and a final LayerNorm over all tokens")
        for blk in blocks:
            if not isinstance(blk.attn, nn.MultiheadAttention) or hasattr(blk, "ln_1_kv"):
                raise ValueError("SDP supports open_clip's standard ResidualAttentionBlock only")
        vit: Any = visual  # open_clip ships no type stubs: its submodules are read by name
        self.visual = vit
        self.stage_len = len(blocks) // N_STAGES
        self.heads = blocks[0].attn.num_heads
        self.width = vit.conv1.out_channels
        self.scale = (self.width // self.heads) ** -0.5
        self.grid = int(round((vit.positional_embedding.shape[0] - 1) ** 0.5))  # patches per side
        self.fused = True  # eager attention through scaled_dot_product_attention (module docstring)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image [B, 3, H, W] -> ln_pre(tokens + pos) [B, T, W]."""
        v = self.visual
        x = v.conv1(x).flatten(2).transpose(1, 2)
        cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding
        return v.ln_pre(x)

    def block(self, blk: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One block on the original stream X_{l-1} [B, T, W] -> (X_mid, X_l, VV_l), each [B, T, W].

        ``blk``: an open_clip ``ResidualAttentionBlock`` (an nn.Module; open_clip has no type stubs).
        """
        attn = blk.attn
        h = blk.ln_1(x)
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (split_heads(t, self.heads) for t in (q, k, v))
        out = F.linear(
            merge_heads(attention(q, k, v, self.scale, self.fused)), attn.out_proj.weight, attn.out_proj.bias
        )
        vv = F.linear(merge_heads(vv_attention(v, self.scale, self.fused)), attn.out_proj.weight, attn.out_proj.bias)
        x_mid = x + blk.ls_1(out)
        x_out = x_mid + blk.ls_2(blk.mlp(blk.ln_2(x_mid)))
        return x_mid, x_out, vv

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """Shared final ln_post and projection: [..., T, W] -> [..., T, D] (section 4.5)."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    def forward(self, x: torch.Tensor, project: bool = True) -> Taps:
        """Normalised image float32 [B, 3, H, W] -> Taps.

        With ``project=False`` the surgery tokens are returned before ln_post/proj, [B, 4, T, W]
        (SDPModel projects them itself so that the export keeps that step in FP32).
        """
        x = self.embed(x)
        s = self.stage_len
        stage_sums: list[torch.Tensor] = []
        ori: list[torch.Tensor] = []
        path = x  # placeholder; the first block always resets the path
        for i, blk in enumerate(self.visual.transformer.resblocks):
            x_mid, x, vv = self.block(blk, x)
            first_of_stage = i % s == 0
            path = vv if first_of_stage else path + vv
            if first_of_stage and i > 0:
                ori.append(x_mid)  # section 4.4: the previous stage's "ori" tap
            if (i + 1) % s == 0:
                stage_sums.append(path)
        ori.append(x)  # stage 4: the true final output X_L
        # cls row from each stage's tap (4.5)
        tokens = torch.stack(
            [torch.cat([o[:, :1], p[:, 1:]], dim=1) for p, o in zip(stage_sums, ori, strict=False)], dim=1
        )
        return Taps(surgery=self.project(tokens) if project else tokens, ori=torch.stack(ori, dim=1))
