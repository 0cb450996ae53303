"""The results of `clipad eval` as typed records, serialised in one place (results.json).

``EvalResults``: per category a ``CategoryResult`` (the metric groups as fractions, None where
undefined; counts; notes; the map smoothing (sigma) used; the RVS summary, the timing and, in the
normal-reference mode, the spread over the shot seeds) and their ``mean``. ``to_json`` writes results.json's structure
(category entries in order, then ``mean``); ``from_json`` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from clipad.core.atomic import write_text_atomic
from clipad.evaluation.metrics import mean_of

METRIC_GROUPS = ("image", "pixel", "image_prob")
Metrics = dict[str, float | None]  # auroc, f1_max, ap (and aupro for pixels)


@dataclass
class CategoryResult:
    """One category (or, without ``skipped`` and ``notes``, the mean over them)."""

    image: Metrics  # on the fused score
    pixel: Metrics
    image_prob: Metrics  # on the raw image_prob
    n_images: int
    n_skipped: int
    skipped: list[str] | None = None  # the first unreadable files
    notes: list[str] | None = None
    rvs: dict[str, Any] | None = None  # TextVectors.summary()
    timing_s: dict[str, float] | float | None = None
    shots: dict[str, Any] | None = None  # k, seeds, mode, memory_patches, std, per_seed, reference_images
    sigma: float | None = None  # the map smoothing used (pixels), the default or --sigma

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CategoryResult:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class EvalResults:
    categories: dict[str, CategoryResult]
    mean: CategoryResult = field(init=False)
    written_to: Path | None = field(default=None, compare=False)  # where ``write`` put them (not serialised)

    def __post_init__(self) -> None:
        cats = list(self.categories.values())
        image, pixel, image_prob = (mean_of([getattr(c, g) for c in cats]) for g in METRIC_GROUPS)
        n_images, n_skipped = sum(c.n_images for c in cats), sum(c.n_skipped for c in cats)
        self.mean = CategoryResult(image, pixel, image_prob, n_images, n_skipped)

    @classmethod
    def of(cls, entries: dict[str, dict[str, Any]]) -> EvalResults:
        """From the per-category entries (``CategoryResult.to_json``'s structure); the mean is computed."""
        return cls({cat: CategoryResult.from_json(e) for cat, e in entries.items()})

    def to_json(self) -> dict[str, Any]:
        return {**{c: r.to_json() for c, r in self.categories.items()}, "mean": self.mean.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvalResults:
        """results.json's structure; its ``mean`` is recomputed from the categories (the same figures)."""
        return cls.of({c: e for c, e in d.items() if c != "mean"})

    def record_sigma(self, sigma: float) -> None:
        """Record the map smoothing every category was evaluated with."""
        for result in self.categories.values():
            result.sigma = sigma

    def write(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_json(), indent=2) + "\n")
        self.written_to = path

    def describe(self) -> str:
        """Paper Table 1 layout in percent (image AUROC/F1-max/AP on the fused score, pixel AUROC/F1-max/AP/AUPRO),
        then in the normal-reference mode one line per category with the spread over the shot seeds."""
        head = (
            f"{'category':<14} | {'I-AUROC':>7} {'I-F1max':>7} {'I-AP':>7} | "
            f"{'P-AUROC':>7} {'P-F1max':>7} {'P-AP':>7} {'AUPRO':>7} | {'prob-AUROC':>10}"
        )
        lines = [head, "-" * len(head)]
        for name, r in [*self.categories.items(), ("mean", self.mean)]:
            if name == "mean":
                lines.append("-" * len(head))
            i, p, q = r.image, r.pixel, r.image_prob
            lines.append(
                f"{name:<14} | {_pct(i['auroc']):>7} {_pct(i['f1_max']):>7} {_pct(i['ap']):>7} | "
                f"{_pct(p['auroc']):>7} {_pct(p['f1_max']):>7} {_pct(p['ap']):>7} {_pct(p['aupro']):>7} | "
                f"{_pct(q['auroc']):>10}"
            )
        return "\n".join(lines + self._spread())

    def _spread(self) -> list[str]:
        lines = []
        for cat, r in self.categories.items():
            if r.shots is None:
                continue
            s = r.shots
            pa, ia = r.pixel["auroc"], r.image["auroc"]
            sp, si = s["std"]["pixel"]["auroc"], s["std"]["image"]["auroc"]
            lines.append(
                f"{cat}: K={s['k']} over seeds {','.join(map(str, s['seeds']))} ({s['mode']}): "
                f"image AUROC {_spread(ia, si)}, pixel AUROC {_spread(pa, sp)}"
            )
        return lines

    def notes(self) -> list[str]:
        """The lines for stderr: each category's notes, the unreadable images and where the results went."""
        out = self.written_to
        lines = [
            f"note: {cat}: {note}"
            for cat, r in self.categories.items()
            for note in (r.rvs or {}).get("notes", []) + (r.notes or [])
        ]
        if self.mean.n_skipped:
            lines.append(f"skipped {self.mean.n_skipped} unreadable images (listed in {out})")
        return lines + ([f"results written to {out}"] if out is not None else [])


def _pct(v: float | None) -> str:
    return "   -" if v is None else f"{100 * v:5.1f}"


def _spread(m: float | None, d: float | None) -> str:
    return "-" if m is None else f"{100 * m:.1f} +- {100 * (d or 0):.1f}"
