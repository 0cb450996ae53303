"""Floating-point operations of one SDP/SDP+ forward, counted analytically from the ViT's shape
(the parts; each method in ``clipad.methods`` adds up its own).

torch's FlopCounterMode misses open_clip's fused attention fast path, so the benchmark counts
from the dimensions instead. Convention: a multiply-add is 2 FLOPs, only matrix products and
the patch convolution are counted (as FlopCounterMode does); LayerNorm, softmax, GELU, biases,
normalisation and residual adds are not. Per image, with W the width, L blocks, T = g^2 + 1
tokens (g patches per side, patch p), M the MLP width, D the embedding dimension and n the
image side (method.md sections 4-7):

- patch embedding (conv, no bias):  2 g^2 W 3 p^2
- original path, per block:         qkv 2 T W 3W, q k^T 2 T^2 W, A v 2 T^2 W, out-proj 2 T W^2,
                                    MLP 2 T W M x 2
- V-V path, per block:              v v^T 2 T^2 W, A v 2 T^2 W, out-proj 2 T W^2 (q, k, v shared)
- projection, 4 stages, all tokens: 2 x 4 T W D (ln_post then proj)
- feature surgery and image_prob:   cosines 2 x 4 T D 2, image cosines 2 D 2
- SDP+ heads:                       linear 2 x 4 (T-1) W D, cosines 2 x 4 (T-1) D 2
- upsampling and blur as matrices (clipad/model/maps.py, ``rows @ X @ cols^T``):
  SDP: K X K^T with K [n, g]: 2 n g g + 2 n g n;
  SDP+: that for the SDP map and for each of the 4 head logit maps, then G Y G^T with
  G [n, n]: 2 n^3 x 2.

A plain open_clip image encoding is the patch embedding, the original path and the projection
of the class token alone (2 W D).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

N_STAGES = 4
N_CLASSES = 2


@dataclass(frozen=True)
class ViTDims:
    """The shape of a ViT as the FLOP count needs it: the input ``image_size`` px high and
    ``image_width`` px wide (None: square, the CLIP methods'; AnomalyDINO's may be [H, W])."""

    image_size: int
    patch: int
    width: int
    layers: int
    mlp: int
    embed_dim: int
    image_width: int | None = None

    @property
    def grid(self) -> int:
        """Patches along the height (along each side of a square input)."""
        return self.image_size // self.patch

    @property
    def grid_width(self) -> int:
        return (self.image_width or self.image_size) // self.patch

    @property
    def patches(self) -> int:
        return self.grid * self.grid_width

    @property
    def tokens(self) -> int:
        return self.patches + 1

    @classmethod
    def from_visual(cls, visual: nn.Module, image_size: int) -> ViTDims:
        """From an open_clip ``VisionTransformer`` (the reference's ``clip.visual``)."""
        vit: Any = visual  # open_clip ships no type stubs: its submodules are read by name
        blocks = vit.transformer.resblocks
        patch = vit.conv1.kernel_size
        return cls(
            image_size=int(image_size),
            patch=int(patch[0] if isinstance(patch, tuple) else patch),
            width=int(vit.conv1.out_channels),
            layers=len(blocks),
            mlp=int(blocks[0].mlp.c_fc.out_features),
            embed_dim=int(vit.proj.shape[1]),
        )


def _separable(n_out: int, n_in: int) -> int:
    """``K X K^T`` with K [n_out, n_in] and X [n_in, n_in]: (K X) then (K X) K^T."""
    return 2 * n_out * n_in * n_in + 2 * n_out * n_in * n_out


def patch_embed_flops(d: ViTDims) -> int:
    return 2 * d.patches * d.width * 3 * d.patch**2


def original_block_flops(d: ViTDims) -> int:
    """One block of the standard ViT: qkv, attention (q k^T, A v), out-projection, MLP."""
    t, w = d.tokens, d.width
    return 2 * t * w * 3 * w + 2 * (2 * t * t * w) + 2 * t * w * w + 2 * (2 * t * w * d.mlp)


def vv_block_flops(d: ViTDims) -> int:
    """The V-V path's extra work in one block: v v^T, A v and the out-projection."""
    t, w = d.tokens, d.width
    return 2 * (2 * t * t * w) + 2 * t * w * w


def sdp_parts(d: ViTDims) -> dict[str, int]:
    """FLOPs of one image through SDP, by part (``heads`` 0): the parts every CLIP-AD method
    counts, which a method (``clipad.methods``) adjusts and totals with ``with_total``."""
    t, w, e, n, g = d.tokens, d.width, d.embed_dim, d.image_size, d.grid
    return {
        "patch_embed": patch_embed_flops(d),
        "original_path": d.layers * original_block_flops(d),
        "vv_path": d.layers * vv_block_flops(d),
        "projection": 2 * N_STAGES * t * w * e,
        "feature_surgery": 2 * N_STAGES * t * e * N_CLASSES + 2 * e * N_CLASSES,
        "heads": 0,
        "upsample_blur": _separable(n, g),
    }


def heads_flops(d: ViTDims) -> int:
    """The four SDP+ heads: linear maps and their cosines with the text vectors."""
    t, w, e = d.tokens, d.width, d.embed_dim
    return 2 * N_STAGES * (t - 1) * w * e + 2 * N_STAGES * (t - 1) * e * N_CLASSES


def heads_upsample_blur_flops(d: ViTDims) -> int:
    """SDP+'s maps: the SDP map and the 4 head logit maps upsampled, then one blur of their sum."""
    return (1 + N_STAGES) * _separable(d.image_size, d.grid) + _separable(d.image_size, d.image_size)


def reference_flops(d: ViTDims, memory_patches: int) -> int:
    """A baked reference memory of M patches per stage (method.md 14): its similarity product,
    then its upsampling and blur."""
    return 2 * N_STAGES * (d.tokens - 1) * d.width * memory_patches + _separable(d.image_size, d.grid)


def with_total(parts: dict[str, int]) -> dict[str, int]:
    """``parts`` with their sum added as ``total``."""
    return {**parts, "total": sum(parts.values())}


def plain_encoding_flops(d: ViTDims) -> int:
    """FLOPs of one plain open_clip image encoding (``visual(x)``): embed, blocks, cls projection."""
    return patch_embed_flops(d) + d.layers * original_block_flops(d) + 2 * d.width * d.embed_dim
