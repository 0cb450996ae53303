"""What `clipad bench` measures: backends x precisions x batch sizes, and how often."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clipad.core.choices import ATTENTIONS, PRECISIONS, Attention, Precision
from clipad.core.errors import ClipadError
from clipad.runtime.backends import BACKENDS, BackendName

if TYPE_CHECKING:
    from clipad.runtime.backends.triton_backend import TritonTarget


@dataclass
class BenchConfig:
    """Every backend x precision x batch combination, ``warmup`` untimed and ``iterations`` timed
    calls each; ``device``: auto, cpu or cuda; ``parity``: also compare with the reference;
    ``triton``: the server of backend triton (``backends.triton_backend.TritonTarget``);
    ``attentions``: the torch backend's attention forms, a row set each (fused, explicit)."""

    backends: list[BackendName]
    precisions: list[Precision]
    batches: list[int]
    iterations: int = 20
    warmup: int = 3
    device: str = "auto"
    parity: bool = True
    triton: TritonTarget | None = None
    attentions: list[Attention] = field(default_factory=lambda: ["fused"])


def validate(cfg: BenchConfig) -> None:
    """One-line errors for unusable settings, before any model work."""
    for name in cfg.backends:
        if name not in BACKENDS:
            raise ClipadError(f"unknown backend '{name}' (one of {', '.join(BACKENDS)})")
    for p in cfg.precisions:
        if p not in (*PRECISIONS, "bf16"):  # bf16: OpenVINO only
            raise ClipadError(f"unknown precision '{p}' (one of {', '.join(PRECISIONS)}, bf16)")
    for a in cfg.attentions:
        if a not in ATTENTIONS:
            raise ClipadError(f"unknown attention '{a}' (one of {', '.join(ATTENTIONS)})")
    if not cfg.backends or not cfg.precisions or not cfg.batches or not cfg.attentions:
        raise ClipadError("--backends, --precision, --batch and --attention each need at least one value")
    if any(b < 1 for b in cfg.batches):
        raise ClipadError(f"--batch sizes must be >= 1, got {','.join(map(str, cfg.batches))}")
    if cfg.iterations < 1 or cfg.warmup < 0:
        raise ClipadError("--iterations must be >= 1 and --warmup >= 0")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise ClipadError(f"--device must be auto, cpu or cuda, got '{cfg.device}'")
