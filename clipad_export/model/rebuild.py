"""The PyTorch reference rebuilt from what an export recorded, as plain values: the loaded
backbone, the text vectors, the map settings, the heads file and the baked reference memory
(``clipad.deploy.rebuild`` reads them from an artifact directory)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipad.model.heads import load_heads
from clipad.model.loading import LoadedModel
from clipad.model.reference import ReferenceModel, ScoreConstants
from clipad.model.sdp import SDPModel


@dataclass(frozen=True)
class BakedReference:
    """A normal-reference memory: tokens float32 [stages, patches, width] (unit rows), the score
    constants, and whether the model is reference-only (no text path)."""

    tokens: torch.Tensor
    score: ScoreConstants
    only: bool


def build_reference_model(
    loaded: LoadedModel,
    text_features: np.ndarray,
    image_size: int,
    sigma: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    heads_path: Path | None = None,
    reference: BakedReference | None = None,
) -> SDPModel:
    """The reference in eval mode. text_features: float32 [2, embed_dim] (row 0 normal, row 1
    abnormal; the text_features.npy layout); heads_path: the SDP+ heads file (None: zero-shot)."""
    visual: Any = loaded.clip.visual  # open_clip's VisionTransformer (no type stubs)
    heads = None
    if heads_path is not None:
        heads = load_heads(heads_path, visual.conv1.out_channels, visual.proj.shape[1])
    text = torch.from_numpy(np.ascontiguousarray(text_features.T))
    model = SDPModel(visual, text, image_size, sigma, heads, mean, std).eval()
    if reference is not None:
        model = ReferenceModel(model, reference.tokens, reference.score, reference_only=reference.only).eval()
    return model
