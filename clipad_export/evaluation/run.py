"""`clipad eval` as a record: what the user asked for (``EvalRun``, its fields named as the command's
options), checked and loaded by ``prepare`` before the slow part, run by ``PreparedEval.run``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipad.core.lists import comma_list
from clipad.core.values import MEMORY_PATCHES, SHOTS, SIGMA
from clipad.core.weights import RANDOM_WEIGHTS_NOTE

if TYPE_CHECKING:
    from clipad.core.progress import Tasks
    from clipad.data import Sample
    from clipad.evaluation.evaluate import EvalConfig
    from clipad.evaluation.results import EvalResults
    from clipad.model.loading import LoadedModel, WeightSpec


@dataclass
class EvalRun:
    dataset: str
    root: Path
    weight_spec: WeightSpec
    categories: str | None = None  # comma-separated; None: all
    method: str = "sdp"  # clipad.methods: a registered name (--method, alias --mode)
    heads: Path | None = None
    rvs: str = "dbscan"
    prompts: str = "industrial"
    sigma: float | None = None
    batch_size: int = 8
    shots: int | None = None  # the normal-reference mode: K good training images per category and seed
    shot_seeds: str = "0"
    memory_patches: int = 1024
    device: str = "auto"
    out: Path | None = None  # where ``PreparedEval.run`` writes results.json (None: nowhere)

    def __post_init__(self) -> None:
        if self.sigma is not None:
            SIGMA.parse(self.sigma, "--sigma")
        if self.shots is not None:
            SHOTS.parse(self.shots, "--shots")
        MEMORY_PATCHES.parse(self.memory_patches, "--memory-patches")

    def prepare(self, log: Callable[[str], None]) -> PreparedEval:
        """Check the request, read the split, load the model and heads; ``log`` says what will run."""
        from clipad.core.choices import RvsMethod, parse_choice
        from clipad.data import check_masks, load_split
        from clipad.evaluation.evaluate import EvalConfig
        from clipad.methods.registry import get_method
        from clipad.model.heads import load_heads
        from clipad.model.loading import resolve_device
        from clipad.model.prompts import load_prompt_set

        method = get_method(self.method)
        method.check_options(
            self.heads is not None, self.shots is not None, "--shots K (good training images per category)"
        )
        parse_choice(RvsMethod, self.rvs, "--rvs")
        seeds = comma_list(self.shot_seeds, "--shot-seeds", int)
        prompt_set = load_prompt_set(self.prompts)
        split = load_split(
            self.dataset,
            self.root,
            comma_list(self.categories, "--categories") if self.categories is not None else None,
        )
        check_masks(split)
        loaded = method.load(self.weight_spec, resolve_device(self.device))
        visual: Any = loaded.clip.visual  # open_clip's VisionTransformer (no type stubs)
        width, embed_dim = visual.conv1.out_channels, visual.proj.shape[1]
        # check_options: heads are given exactly when the method takes them
        heads = load_heads(self.heads, width, embed_dim) if self.heads is not None else None
        cfg = EvalConfig(self.dataset, method.name, heads, self.rvs, prompt_set, self.sigma, self.batch_size)
        log(
            f"evaluating {method.label(self.shots)} on {sum(len(v) for v in split.values())} images in "
            f"{len(split)} categories with "
            f"{self.weight_spec.model} ({loaded.spec.describe()}), sigma {cfg.effective_sigma():g}"
        )
        if self.weight_spec.random_weights:
            log(RANDOM_WEIGHTS_NOTE)
        return PreparedEval(self, loaded, split, cfg, seeds)


@dataclass
class PreparedEval:
    request: EvalRun
    loaded: LoadedModel
    split: dict[str, list[Sample]]
    cfg: EvalConfig
    seeds: list[int]

    def run(self, tasks: Tasks) -> EvalResults:
        from clipad.evaluation.evaluate import evaluate
        from clipad.evaluation.shots import evaluate_shots

        r = self.request
        if r.shots is None:
            results = evaluate(self.loaded, self.split, self.cfg, tasks)
        else:
            results = evaluate_shots(
                self.loaded, self.split, self.cfg, r.root, r.shots, self.seeds, tasks, r.memory_patches
            )
        results.record_sigma(self.cfg.effective_sigma())
        if r.out is not None:
            results.write(r.out)
        return results
