"""What `clipad bench` measures: backends x precisions x batch sizes, and how often."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clipad.core.choices import Attention, BackendName, DeviceChoice, ServedPrecision, parse_choice
from clipad.core.errors import ClipadError
from clipad.core.lists import comma_list
from clipad.core.values import BATCH, ITERATIONS, WARMUP

if TYPE_CHECKING:
    from clipad.runtime.backends.triton_backend import TritonTarget


@dataclass
class BenchConfig:
    """Every backend x precision x batch combination, ``warmup`` untimed and ``iterations`` timed
    calls each; ``device``: auto, cpu or cuda; ``parity``: also compare with the reference;
    ``triton``: the server of backend triton (``backends.triton_backend.TritonTarget``);
    ``attentions``: the torch backend's attention forms, a row set each (fused, explicit)."""

    backends: list[BackendName]
    precisions: list[ServedPrecision]  # bf16: OpenVINO only (choices.SERVES)
    batches: list[int]  # empty: 1 and the artifacts' max batch (``fit``)
    iterations: int = 20
    warmup: int = 3
    device: DeviceChoice = "auto"
    parity: bool = True
    triton: TritonTarget | None = None
    attentions: list[Attention] = field(default_factory=lambda: ["fused"])

    @classmethod
    def parse(cls, backends: str, precisions: str, batches: str | None, attentions: str, **rest: Any) -> BenchConfig:
        """From the comma-separated option values (``--backends torch,onnxruntime --batch 1,8``);
        ``batches`` None: 1 and the artifacts' max batch."""
        return cls(
            backends=comma_list(backends, "--backends"),
            precisions=comma_list(precisions, "--precision"),
            batches=comma_list(batches, "--batch", int) if batches is not None else [],
            attentions=comma_list(attentions, "--attention"),
            **rest,
        )

    def validate(self) -> None:
        validate(self)

    def fit(self, max_batch: int) -> None:
        """One line when a batch size is above what the artifacts serve (``max_batch``); no sizes
        given: 1 and ``max_batch``."""
        if not self.batches:
            self.batches = sorted({1, max_batch})
        over = [b for b in self.batches if b > max_batch]
        if over:
            raise ClipadError(
                f"--batch {','.join(map(str, over))} is above the artifacts' max batch {max_batch} "
                "(`clipad export --max-batch` sets it)"
            )


def validate(cfg: BenchConfig) -> None:
    """One-line errors for unusable settings, before any model work."""
    for name in cfg.backends:
        parse_choice(BackendName, name, "--backends")
    for p in cfg.precisions:
        parse_choice(ServedPrecision, p, "--precision")
    for a in cfg.attentions:
        parse_choice(Attention, a, "--attention")
    if not cfg.backends or not cfg.precisions or not cfg.attentions:
        raise ClipadError("--backends, --precision, --batch and --attention each need at least one value")
    for b in cfg.batches:
        BATCH.parse(b, "--batch")
    ITERATIONS.parse(cfg.iterations, "--iterations")
    WARMUP.parse(cfg.warmup, "--warmup")
    parse_choice(DeviceChoice, cfg.device, "--device")
