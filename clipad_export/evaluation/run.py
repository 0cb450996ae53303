"""`clipad eval` as a record: what the user asked for (``EvalRun``, its fields named as the command's
options), checked and loaded by ``prepare`` before the slow part, run by ``PreparedEval.run``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipad.core.errors import ClipadError
from clipad.core.lists import comma_list
from clipad.core.values import MEMORY_PATCHES, SHOTS, SIGMA
from clipad.core.weights import RANDOM_WEIGHTS_NOTE

if TYPE_CHECKING:
    from clipad.core.progress import Tasks
    from clipad.data import Sample
    from clipad.evaluation.evaluate import EvalConfig
    from clipad.evaluation.results import EvalResults
    from clipad.methods.anomalydino import DinoOptions
    from clipad.methods.base import Method
    from clipad.model.loading import WeightSpec


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
    memory_patches: int | None = None  # None: 1024 in the reference mode, every patch for AnomalyDINO
    backbone: str | None = None  # AnomalyDINO's options (None: not given; DinoOptions' defaults)
    resolution: int | None = None
    rotations: bool = False
    masking: str | None = None
    device: str = "auto"
    out: Path | None = None  # where ``PreparedEval.run`` writes results.json (None: nowhere)

    def __post_init__(self) -> None:
        if self.sigma is not None:
            SIGMA.parse(self.sigma, "--sigma")
        if self.shots is not None:
            SHOTS.parse(self.shots, "--shots")
        if self.memory_patches is not None:
            MEMORY_PATCHES.parse(self.memory_patches, "--memory-patches")

    def dino_options(self, method: Method) -> DinoOptions | None:
        """AnomalyDINO's options for ``method`` (``clipad.methods.anomalydino.dino_options``)."""
        from clipad.methods.anomalydino import dino_options

        clip_only = {
            "--heads": self.heads is not None,
            "--rvs": self.rvs != "dbscan",
            "--prompts": self.prompts != "industrial",
            "--sigma (anomalydino blurs with the official sigma 4)": self.sigma is not None,
        }
        return dino_options(
            method, self.weight_spec, self.backbone, self.resolution, self.rotations, self.masking, clip_only
        )

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
        dino = self.dino_options(method)
        method.check_options(
            self.heads is not None, self.shots is not None, "--shots K (good training images per category)"
        )
        if self.memory_patches is not None and self.shots is None:
            raise ClipadError("--memory-patches bounds the memory of the good images: it goes with --shots K")
        parse_choice(RvsMethod, self.rvs, "--rvs")
        seeds = comma_list(self.shot_seeds, "--shot-seeds", int)
        prompt_set = load_prompt_set(self.prompts)
        split = load_split(
            self.dataset,
            self.root,
            comma_list(self.categories, "--categories") if self.categories is not None else None,
        )
        check_masks(split)
        device = resolve_device(self.device)
        spec = self.weight_spec if dino is None else replace(self.weight_spec, model=dino.backbone)
        loaded = method.load(spec, device)
        heads = None
        if self.heads is not None:  # check_options: heads are given exactly when the method takes them
            visual: Any = loaded.clip.visual  # open_clip's VisionTransformer (no type stubs)
            heads = load_heads(self.heads, visual.conv1.out_channels, visual.proj.shape[1])
        cfg = EvalConfig(
            self.dataset, method.name, heads, self.rvs, prompt_set, self.sigma, self.batch_size, dino, str(device)
        )
        at = (
            f" at {dino.resolution} px{', rotations' if dino.rotations else ''}, masking {dino.masking}" if dino else ""
        )
        log(
            f"evaluating {method.label(self.shots)} on {sum(len(v) for v in split.values())} images in "
            f"{len(split)} categories with {spec.model} ({spec.describe()}){at}, sigma {cfg.effective_sigma():g}"
        )
        if self.weight_spec.random_weights:
            log(RANDOM_WEIGHTS_NOTE)
        return PreparedEval(self, loaded, split, cfg, seeds)


@dataclass
class PreparedEval:
    request: EvalRun
    loaded: Any  # Method.load's: a LoadedModel, or DinoWeights for AnomalyDINO
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
