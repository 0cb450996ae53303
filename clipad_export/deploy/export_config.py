"""What `clipad export` is asked to make (``ExportConfig``), apart from the export itself
(``clipad.deploy.export``), so that a method's export step (``clipad.deploy.anomalydino_export``)
reads it without importing the export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from clipad.core.choices import Method, Precision, RvsMethod
from clipad.model.prompts import PromptSet
from clipad.model.sdp import DEFAULT_SIGMA

if TYPE_CHECKING:
    from clipad.deploy.reference_set import ReferenceConfig
    from clipad.methods.anomalydino import DinoOptions

# fp32: the FP32 graph only. fp16 and all: the FP32 graph (kept: INT8 calibration, the calibration
# constants' identity and FP32 serving need it) and the mixed FP16 graph converted from it; they
# differ only when the FP16 graph misses its parity limits: all drops it with a warning, fp16
# fails the export.
ExportPrecision = Literal["fp32", "fp16", "all"]
PRECISIONS: tuple[str, ...] = get_args(ExportPrecision)


@dataclass
class ExportConfig:
    category: str
    out: Path
    object_name: str | None = None
    method: Method = "sdp"  # clipad.methods: what the graph computes; the manifest's mode
    heads_path: Path | None = None
    rvs: RvsMethod = "dbscan"
    rvs_profile: str = "mvtec"
    prompts: PromptSet | None = None
    prompts_source: str = "industrial"
    sigma: float = DEFAULT_SIGMA
    max_batch: int = 8
    precision: ExportPrecision = "all"
    engine: bool = False
    opt_batch: int | None = None  # the engine profile's opt batch (None: tensorrt.plan.default_opt_batch)
    triton_repo: Path | None = None
    reference: ReferenceConfig | None = None  # good images baked into the graph (method.md 14)
    notes: tuple[str, ...] = ()  # warnings the caller adds to the manifest (`clipad reference add`)
    openvino: bool = False  # also the OpenVINO IR (deploy/openvino_export.py)
    gate_root: Path | None = None  # labelled images (MVTec layout) for the reduced precisions' quality gate
    max_auroc_drop: float = 0.5  # the gate's limit, AUROC points
    dino: DinoOptions | None = None  # AnomalyDINO's options (None: its defaults; only for that method)
    device: str = "cpu"  # where a method built from a state dict (AnomalyDINO) bakes its memory

    @property
    def precisions(self) -> list[Precision]:
        return ["fp32"] if self.precision == "fp32" else ["fp32", "fp16"]  # fp16 is converted from fp32
