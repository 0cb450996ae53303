"""AnomalyDINO: few-shot detection with DINOv2 patch features (method.md section 15).

The graph (``clipad.model.anomalydino.AnomalyDinoModel``) holds the backbone, the good images'
memory, the optional foreground mask and the official top-1% score; image_prob is that score
(a cosine distance, not a probability). Needs good images; no text path, no heads.

Not registered yet (``registry.METHODS``): export, eval and the manifest are still CLIP-shaped
(text vectors, square ``image_size``, open_clip weights), so `--method anomalydino` would fail
inside them. This module is what the registration will add; ``masking_default`` is the official
per-category table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipad.methods.base import EvalProtocol, Method

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from clipad.model.anomalydino import AnomalyDinoModel
    from clipad.model.flops import ViTDims

BACKBONES = ("dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14")  # the torch.hub names
DEFAULT_RESOLUTION = 448
# The official "agnostic" preset: masked categories (MVTec AD: those below; VisA: all of them).
MVTEC_MASKED = frozenset({"capsule", "hazelnut", "pill", "screw", "toothbrush"})
MVTEC = frozenset(
    {"bottle", "cable", "carpet", "grid", "leather", "metal_nut", "tile", "transistor", "wood", "zipper"} | MVTEC_MASKED
)
VISA = frozenset(
    {"candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2"}
    | {"pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"}
)


def official_references(good: list[Path], shots: int, seed: int) -> list[Path]:
    """The official few-shot draw: ``sorted(good)[seed * shots:(seed + 1) * shots]`` (sorted by
    file name, as the official ``sorted(os.listdir(...))``); a one-line ClipadError when the
    folder holds too few."""
    from clipad.core.errors import ClipadError

    chosen = sorted(good, key=lambda p: p.name)[seed * shots : (seed + 1) * shots]
    if len(chosen) < shots:
        raise ClipadError(
            f"--shots {shots} with shot seed {seed} needs {(seed + 1) * shots} good training images, "
            f"the folder has {len(good)}"
        )
    return chosen


def masking_default(category: str) -> bool:
    """`--masking auto`: the official agnostic table for MVTec AD and VisA names, off otherwise."""
    return category in MVTEC_MASKED or category in VISA


class AnomalyDino(Method):
    name = "anomalydino"  # type: ignore[assignment]  # not yet a clipad.core.choices.Method word (see above)
    summary = "few-shot DINOv2 nearest neighbours (--reference, --shots)"
    text_path = False
    needs_reference = True
    eval_protocol = EvalProtocol.FEW_SHOT

    def flops(self, dims: ViTDims, memory_patches: int = 0) -> dict[str, int]:
        """The ViT (original path only, all tokens through the final norm), the memory product
        2 P M W, and the map's two constant products; the mask's Gram matrix and squarings are
        counted by ``mask_flops``."""
        from clipad.model.flops import original_block_flops, patch_embed_flops, with_total

        p = dims.grid**2
        return with_total(
            {
                "patch_embed": patch_embed_flops(dims),
                "original_path": dims.layers * original_block_flops(dims),
                "memory": 2 * p * memory_patches * dims.width,
                "upsample_blur": 2 * dims.image_size * dims.grid * (dims.grid + dims.image_size),
            }
        )

    def build_model(
        self, backbone: str, state: dict, references: np.ndarray, rotations: bool, masking: bool
    ) -> AnomalyDinoModel:
        """The model of one category from good images uint8 [K, H, W, 3] (H, W multiples of 14:
        the export's fixed size) and a DINOv2 state dict in the official naming."""
        from clipad.model.anomalydino import AnomalyDinoModel, build_memory
        from clipad.model.dinov2 import DinoFeatures

        features = DinoFeatures(backbone, state, (int(references.shape[1]), int(references.shape[2])))
        memory = build_memory(features, references, rotations)
        return AnomalyDinoModel(features, memory.tokens, masking).eval()


def mask_flops(width: int, patches: int) -> int:
    """The foreground mask per image: the Gram matrix 2 P W^2, 6 squarings 2 W^3 each, 2 power
    steps and the projection 2 W^2 + 2 P W each (clipad.model.anomalydino.first_component)."""
    from clipad.model.anomalydino import POLISH, SQUARINGS

    return 2 * patches * width**2 + SQUARINGS * 2 * width**3 + POLISH * 2 * width**2 + 2 * patches * width


METHOD = AnomalyDino()
