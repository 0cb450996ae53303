"""Helpers shared by the tests (not part of the package)."""

from __future__ import annotations

from clipad.core.progress import Tasks
from clipad.data import Sample
from clipad.evaluation.evaluate import EvalConfig, evaluate
from clipad.model.heads import Heads
from clipad.model.loading import LoadedModel


def mean_pixel_auroc(loaded: LoadedModel, split: dict[str, list[Sample]], heads: Heads | None, sigma: float = 2.0) -> float:
    """Pixel AUROC of SDP (or SDP+ with ``heads``) per category of ``split``, averaged, as
    `clipad eval` computes it (dbscan text vectors, MVTec profile): the quick learning check of
    the training tests."""
    return evaluate(loaded, split, EvalConfig(heads=heads, sigma=sigma), Tasks(None))["mean"]["pixel"]["auroc"]
