"""The DINOv2 backbone of AnomalyDINO: timm's ViT blocks with DINOv2's own position-embedding rule.

method.md section 15.2. timm (``vit_*_patch14_dinov2``) supplies the patch embedding, the blocks
(pre-LN, layer scale, exact GELU, LayerNorm eps 1e-6) and the final norm, and converts the
official DINOv2 state dicts (``checkpoint_filter_fn``). Its forward differs from the official one
in one place, the position embedding at a size other than 518 px: timm resamples to an output
*size* with antialiasing, the official code to a *scale factor* (g + 0.1) / 37 without. So the
embedding is interpolated here, once, with the official rule for the export's fixed grid, and
held as a constant: the graph never resamples.

Weights (``load_state``): the official checkpoints (``dinov2_vits14_pretrain.pth`` ...) or timm's
state dicts, from ``--weights FILE`` (safetensors or a weights-only torch file), from the torch.hub
cache (the official file name under ``torch.hub.get_dir()/checkpoints``) or from the Hugging Face
cache (timm's ``timm/vit_*_patch14_dinov2.lvd142m``); or ``random_state`` (seeded per parameter
name, so the golden-file script builds the same tensors for the official model without sharing a
file). Nothing is downloaded.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from clipad.model.flops import ViTDims

PATCH = 14
BASE_GRID = 37  # the checkpoints' position embedding: 37 x 37 patches (518 px) + the class token
INTERPOLATE_OFFSET = 0.1  # the official scale-factor offset (dinov2 hub: interpolate_offset=0.1)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Arch:
    """One DINOv2 size: ``timm`` model name, width, blocks, heads (MLP ratio 4, patch 14)."""

    timm: str
    width: int
    depth: int
    heads: int

    def dims(self, height: int, width: int) -> ViTDims:
        """The shape the FLOP count needs (``clipad.model.flops``) at a ``height`` x ``width`` px
        input: patch 14, MLP 4 W; the embedding is the width (the patch tokens are the features)."""
        from clipad.model.flops import ViTDims

        return ViTDims(height, PATCH, self.width, self.depth, 4 * self.width, self.width, width)

    @property
    def hub_file(self) -> str:
        """The official checkpoint's file name (torch.hub keeps the URL's name)."""
        return f"dinov2_vit{self.timm.split('_')[1][0]}14_pretrain.pth"


ARCHS: dict[str, Arch] = {  # the torch.hub names of facebookresearch/dinov2
    "dinov2_vits14": Arch("vit_small_patch14_dinov2", 384, 12, 6),
    "dinov2_vitb14": Arch("vit_base_patch14_dinov2", 768, 12, 12),
    "dinov2_vitl14": Arch("vit_large_patch14_dinov2", 1024, 24, 16),
}
HF_TAG = "lvd142m"  # timm's Hugging Face repositories: timm/<model>.lvd142m


@dataclass(frozen=True)
class DinoWeights:
    """A backbone's state dict (official or timm naming) and where it came from (``source``:
    "random (seed N)", or a file path); ``seed``: the random weights' seed (None: from a file)."""

    backbone: str
    state: dict[str, torch.Tensor]
    source: str
    seed: int | None = None


def cached_files(backbone: str, hf_cache: Path | None = None) -> list[Path]:
    """The cached weight files of ``backbone`` that exist (``clipad.core.weights.dinov2_cached_files``:
    the torch.hub cache, then the Hugging Face cache)."""
    from clipad.core.weights import dinov2_cached_files

    return dinov2_cached_files(backbone, hf_cache)


def load_state(
    backbone: str,
    weights: Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
    hf_cache: Path | None = None,
) -> DinoWeights:
    """The backbone's weights: random (``random_weights``), ``weights`` (a file), else the first
    cached file; one-line ClipadErrors for an unknown backbone, an unreadable file or no weights."""
    from clipad.core.errors import ClipadError
    from clipad.model.loading import read_state_dict

    if backbone not in ARCHS:
        raise ClipadError(f"--backbone must be one of {', '.join(ARCHS)}, got '{backbone}'")
    if random_weights:
        return DinoWeights(backbone, random_state(backbone, seed), f"random (seed {seed})", seed)
    if weights is None:
        cached = cached_files(backbone, hf_cache)
        if not cached:
            raise ClipadError(
                f"no {backbone} weights: give --weights FILE (the official {ARCHS[backbone].hub_file} or timm's "
                f"model.safetensors of timm/{ARCHS[backbone].timm}.{HF_TAG}), or --random-weights for a smoke test"
            )
        weights = cached[0]
    return DinoWeights(backbone, read_state_dict(Path(weights)), str(weights))


def official_shapes(arch: Arch) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the official DINOv2 model (``mask_token`` included: it is in
    the checkpoints, unused at inference)."""
    w, m = arch.width, 4 * arch.width
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, w),
        "pos_embed": (1, BASE_GRID * BASE_GRID + 1, w),
        "mask_token": (1, w),
        "patch_embed.proj.weight": (w, 3, PATCH, PATCH),
        "patch_embed.proj.bias": (w,),
    }
    for i in range(arch.depth):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (w,),
                b + "norm1.bias": (w,),
                b + "attn.qkv.weight": (3 * w, w),
                b + "attn.qkv.bias": (3 * w,),
                b + "attn.proj.weight": (w, w),
                b + "attn.proj.bias": (w,),
                b + "ls1.gamma": (w,),
                b + "norm2.weight": (w,),
                b + "norm2.bias": (w,),
                b + "mlp.fc1.weight": (m, w),
                b + "mlp.fc1.bias": (m,),
                b + "mlp.fc2.weight": (w, m),
                b + "mlp.fc2.bias": (w,),
                b + "ls2.gamma": (w,),
            }
        )
    shapes.update({"norm.weight": (w,), "norm.bias": (w,)})
    return shapes


def random_state(backbone: str, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights in the official naming; each tensor from its own generator seeded by
    (seed, crc32(name)), so the values do not depend on any model's parameter order.

    Scales keep every layer away from the identity and activations O(1): matrices N(0, 1/fan_in),
    LayerNorm gains 1 + N(0, 0.1^2), layer-scale gains 0.5 + N(0, 0.1^2), biases N(0, 0.1^2),
    class token and position embedding N(0, 0.5^2) (so the interpolation of the latter matters).
    """
    out = {}
    for name, shape in official_shapes(ARCHS[backbone]).items():
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        r = torch.randn(shape, generator=gen, dtype=torch.float32)
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith(("norm1.weight", "norm2.weight")) or name == "norm.weight":
            out[name] = 1.0 + 0.1 * r
        elif leaf == "gamma":
            out[name] = 0.5 + 0.1 * r
        elif name in ("cls_token", "pos_embed", "mask_token"):
            out[name] = 0.5 * r
        elif len(shape) == 1:
            out[name] = 0.1 * r
        else:
            out[name] = r / math.sqrt(math.prod(shape[1:]))
    return out


def pos_embed_for(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The official interpolation: float32 [1, 1 + 37 * 37, W] -> [1, 1 + gh * gw, W] for a grid
    (gh, gw): bicubic (A = -0.75) with scale factors ((gh + 0.1) / 37, (gw + 0.1) / 37), no
    antialias; unchanged at 37 x 37."""
    n = pos_embed.shape[1] - 1
    side = math.isqrt(n)
    if grid == (side, side):
        return pos_embed.clone()
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:].float()
    scale = ((grid[0] + INTERPOLATE_OFFSET) / side, (grid[1] + INTERPOLATE_OFFSET) / side)
    img = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    out = F.interpolate(img, scale_factor=scale, mode="bicubic", antialias=False)
    if tuple(out.shape[-2:]) != grid:
        raise ValueError(f"position embedding resized to {tuple(out.shape[-2:])}, wanted {grid}")
    return torch.cat([cls, out.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], dim=1)


class DinoFeatures(nn.Module):
    """The last block's patch tokens after the final LayerNorm (the official
    ``get_intermediate_layers(x)[0]``) for a fixed input size.

    ``forward(x)``: float32 [B, 3, H, W] (ImageNet-normalised, H and W multiples of 14) ->
    float32 [B, gh * gw, W] in row-major patch order. ``pos`` (buffer) is the position embedding
    already interpolated to (gh, gw).
    """

    pos: torch.Tensor

    def __init__(self, backbone: str, state: dict[str, torch.Tensor], size: tuple[int, int], source: str = "weights"):
        super().__init__()
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        from clipad.core.errors import ClipadError
        from clipad.model.loading import load_state_dict_checked

        if size[0] % PATCH or size[1] % PATCH:
            raise ValueError(f"input size {size} is not a multiple of {PATCH}")
        self.size = size
        self.grid = (size[0] // PATCH, size[1] // PATCH)
        arch = ARCHS[backbone]
        self.arch = arch
        # dynamic_img_size: the patch embedding accepts any multiple of 14 (timm's own position
        # resampling is bypassed: forward adds ``pos``)
        with torch.device("meta"):  # no random init: every tensor comes from the state dict
            vit: Any = timm.create_model(arch.timm, pretrained=False, img_size=PATCH * BASE_GRID, dynamic_img_size=True)
        # official naming converted by timm (it drops mask_token); timm's own files pass unchanged
        try:
            converted = checkpoint_filter_fn(dict(state), vit)
        except Exception as err:  # a state dict of another model family
            raise ClipadError(f"{source} does not fit {backbone}: {str(err).splitlines()[0]}") from None
        converted = {k: v.to(torch.float32).contiguous() for k, v in converted.items()}
        load_state_dict_checked(vit, converted, source, backbone, assign=True)
        self.patch_embed: nn.Module = vit.patch_embed
        self.blocks: nn.Module = vit.blocks
        self.norm: nn.Module = vit.norm
        self.cls_token = vit.cls_token
        self.register_buffer("pos", pos_embed_for(vit.pos_embed.detach(), self.grid))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x)  # [B, gh, gw, W] (timm's dynamic size keeps NHWC)
        t = t.reshape(t.shape[0], -1, t.shape[-1])
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.norm(self.blocks(t))[:, 1:]
