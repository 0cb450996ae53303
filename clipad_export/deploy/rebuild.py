"""The PyTorch reference of an artifact directory: its manifest's weights, text vectors, heads
and reference memory (hash-checked) handed to ``clipad.model.rebuild``; for AnomalyDINO its
weights and the memory file (``dino_reference``). Used by `clipad
reference add`, the torch backend, `clipad parity` and `clipad bench`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import (
    DINO_MEMORY,
    HEADS_FILE,
    REFERENCE_MEMORY,
    AnomalyDinoEntry,
    FileWeights,
    Manifest,
    RandomWeights,
)
from clipad.methods.anomalydino import METHOD
from clipad.methods.registry import get_method
from clipad.model.loading import WeightSpec
from clipad.model.rebuild import BakedReference, build_reference_model
from clipad.model.sdp import SDPModel

if TYPE_CHECKING:
    from clipad.model.anomalydino import AnomalyDinoModel

MEMORY_KEY = "memory"  # the tensor's name in dino_memory.safetensors (written by deploy/anomalydino_export.py)


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
        m.geometry.height,  # square: the CLIP methods' manifests are (Manifest.check_consistency)
        m.sigma,
        tuple(m.mean),
        tuple(m.std),
        artifacts.verified_path(HEADS_FILE) if method.takes_heads else None,
        baked,
    )


def load_dino_memory(path: Path, entry: AnomalyDinoEntry) -> torch.Tensor:
    """The memory file back: float32 [patches, width] as its manifest record says; one line otherwise."""
    try:
        tokens = load_file(str(path))[MEMORY_KEY]
    except (OSError, KeyError, ValueError) as err:
        raise ClipadError(f"cannot read the AnomalyDINO memory {path}: {err}") from None
    if tokens.dtype != torch.float32 or list(tokens.shape) != [entry.patches, entry.width]:
        raise ClipadError(f"{path} is not the memory its manifest describes ({list(tokens.shape)}, {tokens.dtype})")
    return tokens


def dino_reference(artifacts: Artifacts, device: str | torch.device = "cpu") -> AnomalyDinoModel:
    """The PyTorch reference of an AnomalyDINO export: the weights its manifest records (a file's
    sha256 checked) and the memory file (hash-checked), at the recorded size and masking."""
    m = artifacts.manifest
    entry = m.anomalydino
    if entry is None:  # the manifest's rule: mode anomalydino has the record
        raise ClipadError(f"{artifacts.root}: mode anomalydino without its anomalydino record; re-export")
    w = m.weights
    if isinstance(w, FileWeights) and (not Path(w.path).is_file() or file_sha256(Path(w.path)) != w.sha256):
        raise ClipadError(f"weights file {w.path} is missing or changed since export (sha256 differs); re-export")
    weights = METHOD.load(weight_spec(m))
    memory = load_dino_memory(artifacts.verified_path(DINO_MEMORY), entry)
    return METHOD.from_memory(weights.backbone, weights.state, m.geometry.hw, memory, entry.masking, device)
