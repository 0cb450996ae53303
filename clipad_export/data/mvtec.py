"""MVTec AD layout: ROOT/<category>/test/<defect>/<name>.png, masks in
ROOT/<category>/ground_truth/<defect>/<name>_mask.png; 'good' is the normal class."""

from __future__ import annotations

from pathlib import Path

from clipad.data.images import is_image_file
from clipad.data.samples import Sample


def read(root: Path) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for cat_dir in sorted(p for p in root.iterdir() if (p / "test").is_dir()):
        samples = []
        for defect_dir in sorted(p for p in (cat_dir / "test").iterdir() if p.is_dir()):
            normal = defect_dir.name == "good"
            for img in sorted(p for p in defect_dir.iterdir() if is_image_file(p)):
                mask = None
                if not normal:
                    cand = cat_dir / "ground_truth" / defect_dir.name / f"{img.stem}_mask.png"
                    mask = cand if cand.is_file() else None
                samples.append(Sample(img, 0 if normal else 1, mask, defect_dir.name, cat_dir.name))
        out[cat_dir.name] = samples
    return out
