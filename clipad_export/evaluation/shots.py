"""`clipad eval --shots K`: the normal-reference mode under the usual few-shot protocol.

Per category and shot seed: K good *training* images drawn at random (numpy's default_rng(seed),
without replacement, from the sorted list), the memory baked from them exactly as `clipad export
--reference` bakes it (``clipad.model.reference.bake``), then the test split scored and measured
as `clipad eval` does (``run_category``, ``category_metrics``). Each category's entry holds the
mean over seeds, the standard deviation over seeds (``shots.std``) and every seed's figures.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from clipad.core.errors import ClipadError
from clipad.core.progress import Tasks
from clipad.data import Sample
from clipad.data.images import is_image_file, load_image
from clipad.evaluation.evaluate import EvalConfig, category_metrics, category_model, run_category
from clipad.evaluation.metrics import mean_of
from clipad.evaluation.results import METRIC_GROUPS, EvalResults
from clipad.methods.registry import get_method
from clipad.model.loading import LoadedModel
from clipad.model.reference import DEFAULT_MEMORY_PATCHES, bake


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


def draw(files: list[Path], k: int, seed: int) -> list[Path]:
    """K of ``files`` for one shot seed; one line when there are fewer than K."""
    if k > len(files):
        raise ClipadError(f"--shots {k} is more than the {len(files)} good training images in {files[0].parent}")
    idx = np.random.default_rng(seed).choice(len(files), size=k, replace=False)
    return [files[i] for i in sorted(idx)]


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
    memory_patches: int = DEFAULT_MEMORY_PATCHES,
) -> EvalResults:
    """The results: per category the mean over ``seeds`` plus ``shots``
    {k, seeds, mode, std, per_seed, reference_images}; ``mean`` over categories. ``cfg.method``
    without a text path: the reference map alone, else added to the method's map (method.md 14)."""
    if shots < 1:
        raise ClipadError(f"--shots must be at least 1, got {shots}")
    if not seeds:
        raise ClipadError("--shot-seeds needs at least one seed")
    files = {cat: train_good_images(cfg.dataset, root, cat) for cat in split}  # every error before model work
    for cat in split:
        draw(files[cat], shots, seeds[0])
    method = get_method(cfg.method)
    results: dict = {}
    for cat, samples in split.items():
        tv, base = category_model(loaded, cat, cfg, tasks)
        base.eval()
        per_seed, chosen = [], {}
        for seed in seeds:
            t0 = time.perf_counter()
            picked = draw(files[cat], shots, seed)
            images = np.stack([load_image(p, loaded.image_size) for p in picked])
            model = bake(base, images, memory_patches, not method.text_path).model
            out = run_category(model, samples, cfg.batch_size, tasks.add(f"{cat} seed {seed}: images", len(samples)))
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
            "rvs": tv.summary(),
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
