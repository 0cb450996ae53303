"""What a method's model brings to `clipad export` (``Source``): the reference model, the
manifest's records that belong to the method, and the writer of its files."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clipad.data.geometry import Geometry
from clipad.deploy.manifest import (
    AnomalyDinoEntry,
    FileWeights,
    OpenClipWeights,
    Prompts,
    RandomWeights,
    ReferenceEntry,
    Rvs,
)

if TYPE_CHECKING:
    from clipad.model.anomalydino import AnomalyDinoModel
    from clipad.model.sdp import SDPModel


@dataclass
class Source:
    """What a method's model brings to the export: the reference ``model`` (uint8 [B, H, W, 3] ->
    anomaly_map float32 [B, H, W], image_prob float32 [B]), the manifest's model name, weights
    record, the input's ``geometry`` (its size is the manifest's ``image_size``), ``mean``/``std``,
    ``sigma`` and its method records (text vectors' ``rvs``/``prompts``, ``heads_sha256``,
    ``reference``, ``anomalydino``), ``write``: writes its files into the staging directory;
    ``warnings`` for the manifest."""

    model: SDPModel | AnomalyDinoModel
    model_name: str
    weights: RandomWeights | FileWeights | OpenClipWeights
    geometry: Geometry
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sigma: float
    write: Callable[[Path], None]
    rvs: Rvs | None = None
    prompts: Prompts | None = None
    heads_sha256: str | None = None
    reference: ReferenceEntry | None = None
    anomalydino: AnomalyDinoEntry | None = None
    warnings: list[str] = field(default_factory=list)
