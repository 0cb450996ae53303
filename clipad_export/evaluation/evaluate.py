"""`clipad eval`: a method over a dataset's test split, with the paper's metrics.

Per category: the text matrix from RVS, the method's model (``clipad.methods``:
``Method.build``), every test image at model resolution (the shared squash resize), masks
resized as in method.md section 2, then image metrics on the method's image score (for SDP and
SDP+ the paper's fusion: per-category min-max of image_prob and of the smoothed map's maximum,
section 6) and on the raw image_prob, and pixel metrics at model resolution. A method without a
zero-shot protocol (``EvalProtocol.FEW_SHOT``) is evaluated by ``clipad.evaluation.shots`` only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from clipad.core.choices import Method
from clipad.core.errors import ClipadError
from clipad.core.progress import Tasks
from clipad.data import Sample, load_batch
from clipad.data.geometry import ModelSize
from clipad.evaluation.metrics import binary_metrics, pixel_metrics
from clipad.evaluation.results import EvalResults
from clipad.methods.anomalydino import DinoOptions
from clipad.methods.base import EvalProtocol, ImageScore
from clipad.methods.registry import get_method
from clipad.model.anomalydino import AnomalyDinoModel
from clipad.model.fusion import map_max, transductive_ranges
from clipad.model.heads import Heads
from clipad.model.loading import LoadedModel
from clipad.model.prompts import PROMPT_SETS, PromptSet
from clipad.model.rvs import DEFAULT_METHOD, n_sentences, text_vectors
from clipad.model.sdp import SDPModel

MAX_LISTED_SKIPS = 20


@dataclass
class EvalConfig:
    dataset: str = "mvtec"
    method: Method = "sdp"  # clipad.methods: builds the model, smooths, scores
    heads: Heads | None = None  # exactly when the method takes heads (SDP+)
    rvs: str = DEFAULT_METHOD
    prompts: PromptSet = PROMPT_SETS["industrial"]
    sigma: float | None = None  # None: the method's default_sigma(dataset)
    batch_size: int = 8
    dino: DinoOptions | None = None  # exactly for AnomalyDINO: its backbone, resolution, rotations, masking
    device: str = "cpu"  # where a model built during the run goes (AnomalyDINO's; the CLIP methods' follow loaded)

    def effective_sigma(self) -> float:
        if self.sigma is not None:
            return self.sigma
        return get_method(self.method).default_sigma(self.dataset)


@dataclass
class CategoryOutput:
    """Raw per-image outputs of one category (kept for tests and for callers that need the maps)."""

    labels: np.ndarray  # int [N]
    image_prob: np.ndarray  # float32 [N]
    map_max: np.ndarray  # float32 [N]
    maps: np.ndarray  # float32 [N, H, W]
    masks: np.ndarray | None  # bool [N, H, W]; None when an anomalous image has no mask
    skipped: list[str] = field(default_factory=list)


@torch.no_grad()
def run_category(
    model: SDPModel | AnomalyDinoModel,
    samples: list[Sample],
    batch_size: int,
    size: ModelSize,
    advance=lambda n: None,
) -> CategoryOutput:
    """Run ``model`` (an SDPModel or an AnomalyDinoModel) over ``samples`` fitted to its input
    ``size`` (``clipad.data.geometry``), in batches; unreadable images are skipped and listed."""
    device = next(model.parameters()).device
    labels: list[int] = []
    probs: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    skipped: list[str] = []
    for i in range(0, len(samples), batch_size):
        images, kept, batch_masks = load_batch(samples[i : i + batch_size], size, skipped)
        if images:
            amap, prob = model(torch.from_numpy(np.stack(images)).to(device))
            maps.append(amap.cpu().numpy())
            probs.append(prob.cpu().numpy())
            labels.extend(s.label for s in kept)
            masks.extend(batch_masks)
        advance(min(batch_size, len(samples) - i))
    if not maps:
        raise ClipadError(f"no readable image in category '{samples[0].category}' ({len(skipped)} unreadable)")
    all_maps = np.concatenate(maps)
    all_masks = None if any(m is None for m in masks) else np.stack(cast(list[np.ndarray], masks))
    return CategoryOutput(np.array(labels), np.concatenate(probs), map_max(all_maps), all_maps, all_masks, skipped)


def category_metrics(out: CategoryOutput, image_score: ImageScore) -> dict:
    """The results.json entry of one category (metrics as fractions; None where undefined);
    ``image_score``: the method's (``Method.image_score``), with the ranges over the category."""
    pr, mr = transductive_ranges(out.image_prob, out.map_max)
    entry: dict[str, Any] = {
        "image": binary_metrics(out.labels, image_score.fuse(out.image_prob, out.map_max, pr, mr)),
        "pixel": pixel_metrics(out.masks, out.maps)
        if out.masks is not None
        else {"auroc": None, "f1_max": None, "ap": None, "aupro": None},
        "image_prob": binary_metrics(out.labels, out.image_prob),
        "n_images": int(len(out.labels)),
        "n_skipped": len(out.skipped),
        "skipped": out.skipped[:MAX_LISTED_SKIPS],
        "notes": [],
    }
    if out.masks is None:
        entry["notes"].append("pixel metrics skipped: an anomalous image has no mask")
    if not 0 < out.labels.sum() < len(out.labels):
        entry["notes"].append("image metrics undefined: the category needs both normal and anomalous images")
    return entry


def category_model(loaded: LoadedModel, category: str, cfg: EvalConfig, tasks: Tasks):
    """The text vectors of ``category`` and the method's model around them: (TextVectors, SDPModel)."""
    tv = text_vectors(
        loaded.clip,
        loaded.tokenizer,
        category,
        cfg.rvs,
        cfg.dataset,
        cfg.prompts,
        on_batch=tasks.add(f"{category}: text vectors", n_sentences(cfg.prompts)),
    )
    model = get_method(cfg.method).build(loaded, torch.from_numpy(tv.matrix), cfg.effective_sigma(), cfg.heads)
    return tv, model


def evaluate(loaded: LoadedModel, split: dict[str, list[Sample]], cfg: EvalConfig, tasks: Tasks) -> EvalResults:
    """Evaluate every category of ``split`` under the zero-shot protocol."""
    method = get_method(cfg.method)
    if method.eval_protocol is not EvalProtocol.ZERO_SHOT:
        raise ClipadError(f"--method {method.name} is evaluated with good images only: add --shots K")
    results: dict = {}
    for cat, samples in split.items():
        t0 = time.perf_counter()
        tv, model = category_model(loaded, cat, cfg, tasks)
        t1 = time.perf_counter()
        out = run_category(model, samples, cfg.batch_size, model.image_size, tasks.add(f"{cat}: images", len(samples)))
        t2 = time.perf_counter()
        entry = category_metrics(out, method.image_score)
        entry["rvs"] = tv.summary()
        entry["timing_s"] = {
            "text": round(t1 - t0, 3),
            "images": round(t2 - t1, 3),
            "per_image": round((t2 - t1) / max(len(samples), 1), 4),
        }
        results[cat] = entry
    return EvalResults.of(results)
