"""`clipad eval --shots K`: the few-shot methods under their protocols.

Per category and shot seed: K good *training* images drawn by the method (``Method.draw``: the
reference mode draws with numpy's default_rng(seed) from the sorted list, AnomalyDINO takes the
official ``sorted(good)[seed*K:(seed+1)*K]``); the model built from them (the CLIP methods: the
memory baked exactly as `clipad export --reference` bakes it, ``clipad.model.reference.bake``;
AnomalyDINO: its DINOv2 memory, ``AnomalyDino.build_model``); then the test split scored and
measured as `clipad eval` does (``run_category``, ``category_metrics``). Each category's entry
holds the mean over seeds, the standard deviation over seeds (``shots.std``) and every seed's
figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clipad.core.errors import ClipadError
from clipad.core.progress import Tasks
from clipad.data import Sample
from clipad.data.geometry import Geometry
from clipad.data.images import is_image_file, read_rgb
from clipad.evaluation.evaluate import EvalConfig, category_metrics, category_model, run_category
from clipad.evaluation.metrics import mean_of
from clipad.evaluation.results import METRIC_GROUPS, EvalResults
from clipad.methods.anomalydino import METHOD, DinoOptions
from clipad.methods.registry import get_method
from clipad.model.anomalydino import AnomalyDinoModel
from clipad.model.loading import LoadedModel
from clipad.model.reference import DEFAULT_MEMORY_PATCHES, bake
from clipad.model.sdp import SDPModel


def train_good_images(dataset: str, root: Path, category: str) -> list[Path]:
    """The good training images of a category (MVTec AD layout: <category>/train/good)."""
    if dataset != "mvtec":
        raise ClipadError(
            f"--shots draws good training images from the MVTec AD layout (<category>/train/good); "
            f"--dataset {dataset} is not supported yet"
        )
    folder = Path(root) / category / "train" / "good"
    files = sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []
    if not files:
        raise ClipadError(f"no good training images for category '{category}' in {folder}")
    return files


def _std(entries: list[dict]) -> dict:
    out: dict[str, dict[str, float | None]] = {}
    for group in METRIC_GROUPS:
        keys = entries[0][group].keys()
        out[group] = {}
        for key in keys:
            vals = [e[group][key] for e in entries if e[group][key] is not None]
            out[group][key] = float(np.std(vals)) if vals else None
    return out


def evaluate_shots(
    loaded: LoadedModel,
    split: dict[str, list[Sample]],
    cfg: EvalConfig,
    root: Path,
    shots: int,
    seeds: list[int],
    tasks: Tasks,
    memory_patches: int | None = None,
) -> EvalResults:
    """The results: per category the mean over ``seeds`` plus ``shots``
    {k, seeds, mode, std, per_seed, reference_images}; ``mean`` over categories. ``cfg.method``
    without a text path: the reference map alone, else added to the method's map (method.md 14).
    ``loaded``: the method's weights (``Method.load``: a LoadedModel, or DinoWeights for
    AnomalyDINO); ``memory_patches``: the memory's coreset bound (None: the reference mode's
    default, AnomalyDINO's every patch)."""
    if shots < 1:
        raise ClipadError(f"--shots must be at least 1, got {shots}")
    if not seeds:
        raise ClipadError("--shot-seeds needs at least one seed")
    method = get_method(cfg.method)
    files = {cat: train_good_images(cfg.dataset, root, cat) for cat in split}  # every error before model work
    for cat in split:
        for seed in seeds:
            method.draw(files[cat], shots, seed)
    if memory_patches is None and method.backbone == "clip":
        memory_patches = DEFAULT_MEMORY_PATCHES
    results: dict = {}
    for cat, samples in split.items():
        size, build, rvs = _shot_models(loaded, cat, cfg, memory_patches, tasks)
        per_seed, chosen = [], {}
        for seed in seeds:
            t0 = time.perf_counter()
            picked = method.draw(files[cat], shots, seed)
            good = [read_rgb(p) for p in picked]
            fit = size(*good[0].shape[:2])
            model = build(np.stack([fit.fit(rgb) for rgb in good]))
            advance = tasks.add(f"{cat} seed {seed}: images", len(samples))
            out = run_category(model, samples, cfg.batch_size, fit, advance)
            entry = category_metrics(out, method.image_score)
            entry["timing_s"] = round(time.perf_counter() - t0, 3)
            per_seed.append(entry)
            chosen[str(seed)] = [p.name for p in picked]
        first = per_seed[0]
        results[cat] = {
            **{g: mean_of([e[g] for e in per_seed]) for g in METRIC_GROUPS},
            "n_images": first["n_images"],
            "n_skipped": first["n_skipped"],
            "skipped": first["skipped"],
            "notes": first["notes"],
            "rvs": rvs,
            "shots": {
                "k": shots,
                "seeds": list(seeds),
                "mode": method.shots_label(),
                "memory_patches": memory_patches,
                "std": _std(per_seed),
                "per_seed": [{g: e[g] for g in (*METRIC_GROUPS, "timing_s")} for e in per_seed],
                "reference_images": chosen,
            },
        }
    return EvalResults.of(results)


def _shot_models(
    loaded: Any, category: str, cfg: EvalConfig, memory_patches: int | None, tasks: Tasks
) -> tuple[Callable[[int, int], Geometry], Callable[[np.ndarray], SDPModel | AnomalyDinoModel], dict | None]:
    """For one category: the model input's geometry given the first good image's height and
    width (AnomalyDINO keeps its aspect ratio; the CLIP methods squash to S x S), the function
    that builds the scored model from the good images (uint8 [K, H, W, 3]), and the RVS summary
    (None without text vectors)."""
    method = get_method(cfg.method)
    if method.backbone == "dinov2":
        dino = cfg.dino or DinoOptions()
        masked = dino.masked(category)

        def build_dino(images: np.ndarray) -> AnomalyDinoModel:
            return METHOD.build_model(
                loaded.backbone, loaded.state, images, dino.rotations, masked, memory_patches, cfg.device
            )[0]

        return dino.geometry, build_dino, None
    tv, base = category_model(loaded, category, cfg, tasks)
    base.eval()
    assert memory_patches is not None  # evaluate_shots gives the CLIP methods the reference mode's default

    def build_clip(images: np.ndarray) -> SDPModel:
        return bake(base, images, memory_patches, not method.text_path).model

    return lambda height, width: Geometry.square(loaded.image_size), build_clip, tv.summary()
