"""`clipad train` as a record: what the user asked for (``TrainRun``, its fields named as the command's
options), checked and loaded by ``prepare``, trained by ``PreparedTraining.run`` (``TrainResult``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipad.core.errors import ClipadError
from clipad.core.lists import comma_list
from clipad.core.values import LEARNING_RATE, SEED

if TYPE_CHECKING:
    from clipad.core.progress import Tasks
    from clipad.data import Sample
    from clipad.model.loading import LoadedModel, WeightSpec
    from clipad.training.train import TrainConfig


@dataclass
class TrainRun:
    dataset: str
    root: Path
    out: Path  # the heads file; checkpoint, log and feature cache go beside it
    weight_spec: WeightSpec
    categories: str | None = None  # comma-separated; None: all
    epochs: int = 5
    batch_size: int = 8
    lr: float = 1e-4
    train_seed: int = 42
    rvs: str = "dbscan"
    resume: Path | None = None
    cache_dtype: str = "float16"
    val_dataset: str | None = None  # a held-out set that selects the epoch
    val_root: Path | None = None
    val_categories: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        LEARNING_RATE.parse(self.lr, "--lr")
        SEED.parse(self.train_seed, "--train-seed")
        if self.val_categories is not None and self.val_dataset is None:
            raise ClipadError("--val-categories goes with --val-dataset and --val-root")
        if self.resume is not None and not self.resume.is_file():
            raise ClipadError(f"--resume {self.resume}: no such checkpoint file")

    def prepare(self) -> PreparedTraining:
        """Check the request, read the splits and load the model (one line for each mistake)."""
        from clipad.core.choices import CacheDtype, RvsMethod, parse_choice
        from clipad.data import check_masks, load_split
        from clipad.model.loading import load_model, resolve_device
        from clipad.training.train import TrainConfig

        parse_choice(RvsMethod, self.rvs, "--rvs")
        parse_choice(CacheDtype, self.cache_dtype, "--cache-dtype")
        split = load_split(
            self.dataset,
            self.root,
            comma_list(self.categories, "--categories") if self.categories is not None else None,
        )
        check_masks(split)
        if (self.val_dataset is None) != (self.val_root is None):
            raise ClipadError("--val-dataset and --val-root go together")
        val_split = None
        if self.val_dataset is not None and self.val_root is not None:  # both or neither, checked above
            vcats = comma_list(self.val_categories, "--val-categories") if self.val_categories is not None else None
            val_split = load_split(self.val_dataset, self.val_root, vcats, "--val-categories")
            check_masks(val_split)
        loaded = load_model(self.weight_spec, resolve_device(self.device))
        cfg = TrainConfig(
            out=self.out,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            seed=self.train_seed,
            rvs=self.rvs,
            dataset=self.dataset,
            cache_dtype=self.cache_dtype,
        )
        return PreparedTraining(self, split, val_split, cfg, loaded)


@dataclass
class PreparedTraining:
    request: TrainRun
    split: dict[str, list[Sample]]
    val_split: dict[str, list[Sample]] | None  # the held-out set that selects the epoch
    cfg: TrainConfig
    loaded: LoadedModel

    def run(self, tasks: Tasks) -> TrainResult:
        from clipad.training.train import train

        r = self.request
        log = train(self.loaded, self.split, self.cfg, tasks, r.resume, self.val_split, r.val_dataset or "mvtec")
        return TrainResult(log, r.out)


@dataclass
class TrainResult:
    log: dict[str, Any]  # the training log (<out>.log.json's structure)
    out: Path

    def notes(self) -> list[str]:
        return []

    def describe(self) -> str:
        last = self.log["epochs"][-1]
        chosen = (
            f", kept epoch {self.log['selected_epoch']} (best validation image AUROC)"
            if "selected_epoch" in self.log
            else ", kept the last epoch"
        )
        return (
            f"trained {len(self.log['epochs'])} epochs (last loss {last['loss']:.4f}){chosen}; "
            f"heads written to {self.out}"
        )
