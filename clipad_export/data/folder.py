"""Plain folder layout: ROOT/<category>/good/* for normal images, ROOT/<category>/<defect>/*
for anomalous ones, each mask beside its image as <name>_mask.<ext>. If ROOT itself holds
good/, ROOT is one category named after it."""

from __future__ import annotations

from pathlib import Path

from clipad.data.images import is_image_file
from clipad.data.samples import Sample

MASK_SUFFIX = "_mask"


def _category(cat_dir: Path) -> list[Sample]:
    samples = []
    for defect_dir in sorted(p for p in cat_dir.iterdir() if p.is_dir()):
        normal = defect_dir.name == "good"
        files = sorted(p for p in defect_dir.iterdir() if is_image_file(p))
        masks = {p.stem[: -len(MASK_SUFFIX)]: p for p in files if p.stem.endswith(MASK_SUFFIX)}
        for img in files:
            if img.stem.endswith(MASK_SUFFIX):
                continue
            mask = None if normal else masks.get(img.stem)
            samples.append(Sample(img, 0 if normal else 1, mask, defect_dir.name, cat_dir.name))
    return samples


def read(root: Path) -> dict[str, list[Sample]]:
    if (root / "good").is_dir():
        return {root.resolve().name: _category(root)}
    return {p.name: _category(p) for p in sorted(root.iterdir()) if (p / "good").is_dir()}
