"""The PyTorch reference of an artifact directory: its manifest's weights, text vectors, heads
and reference memory (hash-checked) handed to ``clipad.model.rebuild``; for AnomalyDINO its
weights and memory file (``clipad.deploy.anomalydino_export.dino_reference``). Used by `clipad
reference add`, the torch backend, `clipad parity` and `clipad bench`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import HEADS_FILE, REFERENCE_MEMORY, FileWeights, Manifest, RandomWeights
from clipad.methods.registry import get_method
from clipad.model.loading import WeightSpec
from clipad.model.rebuild import BakedReference, build_reference_model
from clipad.model.sdp import SDPModel

if TYPE_CHECKING:
    from clipad.model.anomalydino import AnomalyDinoModel


def weight_spec(m: Manifest) -> WeightSpec:
    """The WeightSpec that loads the weights a manifest records."""
    w = m.weights
    if isinstance(w, RandomWeights):
        return WeightSpec(model=m.model, random_weights=True, seed=w.seed)
    if isinstance(w, FileWeights):
        return WeightSpec(model=m.model, weights=Path(w.path))
    return WeightSpec(model=m.model, pretrained=w.tag)


def reference_model(artifacts: Artifacts, device: str | torch.device = "cpu") -> SDPModel | AnomalyDinoModel:
    """Rebuild the PyTorch reference of an artifact directory from its manifest."""
    m = artifacts.manifest
    w = m.weights
    method = get_method(m.mode, "mode")
    if method.backbone == "dinov2":
        from clipad.deploy.anomalydino_export import dino_reference

        return dino_reference(artifacts, device)
    loaded = method.load(weight_spec(m), device)
    if isinstance(w, FileWeights) and loaded.weights_sha256 != w.sha256:
        raise ClipadError(f"weights file {w.path} changed since export (sha256 differs); re-export")
    baked = None
    if m.reference is not None:
        from clipad.deploy.reference_set import load_memory
        from clipad.model.reference import ScoreConstants

        memory = load_memory(artifacts.verified_path(REFERENCE_MEMORY), m.reference)
        s = m.reference.score
        baked = BakedReference(
            memory.tokens, ScoreConstants(s.center, s.scale, list(s.maxima), s.method), not method.text_path
        )
    return build_reference_model(
        loaded,
        artifacts.text_features(),
        m.image_size,
        m.sigma,
        tuple(m.mean),
        tuple(m.std),
        artifacts.verified_path(HEADS_FILE) if method.takes_heads else None,
        baked,
    )
