"""SDP+ linear heads: reading and writing the weights file (method.md section 7.1).

Contract: four ``nn.Linear(width -> embed_dim)`` heads, stored as ``fc.{j}.weight``
[embed_dim, width] and ``fc.{j}.bias`` [embed_dim], j = 0..3, in safetensors. The official
checkpoint layout (a torch file holding ``{'linear_layers': {'fc.0.weight': ...}}``) loads
too, always with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from clipad.core.atomic import atomic_path
from clipad.core.errors import ClipadError
from clipad.model.surgery import N_STAGES


@dataclass
class Heads:
    """weight: float32 [4, embed_dim, width]; bias: float32 [4, embed_dim]."""

    weight: torch.Tensor
    bias: torch.Tensor
    metadata: dict[str, str] = field(default_factory=dict)

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for j in range(N_STAGES):
            out[f"fc.{j}.weight"] = self.weight[j].contiguous()
            out[f"fc.{j}.bias"] = self.bias[j].contiguous()
        return out


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise ClipadError(f"heads file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ClipadError(f"cannot read heads file {path}: {str(err).splitlines()[0]}") from None
    if isinstance(obj, dict) and isinstance(obj.get("linear_layers"), dict):
        obj = obj["linear_layers"]
    if not isinstance(obj, dict):
        raise ClipadError(f"heads file {path} holds no state dict")
    return obj, {}


def load_heads(path: str | Path, width: int, embed_dim: int) -> Heads:
    """Read heads for a model of residual ``width`` and ``embed_dim``; wrong keys or shapes fail in one line."""
    path = Path(path)
    state, meta = _read(path)
    weights, biases = [], []
    for j in range(N_STAGES):
        for key, shape in ((f"fc.{j}.weight", (embed_dim, width)), (f"fc.{j}.bias", (embed_dim,))):
            if key not in state:
                raise ClipadError(f"heads file {path} has no '{key}' (expected fc.0..3 weight/bias)")
            if not isinstance(state[key], torch.Tensor):
                raise ClipadError(f"heads file {path}: '{key}' is a {type(state[key]).__name__}, not a tensor")
            if tuple(state[key].shape) != shape:
                raise ClipadError(
                    f"heads file {path}: '{key}' is {list(state[key].shape)}, this model needs {list(shape)}"
                )
        weights.append(state[f"fc.{j}.weight"].float())
        biases.append(state[f"fc.{j}.bias"].float())
    return Heads(torch.stack(weights), torch.stack(biases), meta)


def save_heads(path: str | Path, heads: Heads) -> None:
    """Write heads as safetensors with string metadata, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(heads.state_dict(), str(tmp), metadata={k: str(v) for k, v in heads.metadata.items()})
