"""VisA layout, read through its split file ROOT/split_csv/1cls.csv
(columns object, split, label, image, mask; paths relative to ROOT; label normal/anomaly)."""

from __future__ import annotations

import csv
from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.data.samples import Sample

SPLIT_CSV = Path("split_csv") / "1cls.csv"


def read(root: Path) -> dict[str, list[Sample]]:
    split = root / SPLIT_CSV
    if not split.is_file():
        raise ClipadError(f"VisA split file not found: {split}")
    out: dict[str, list[Sample]] = {}
    with open(split, newline="") as f:
        reader = csv.DictReader(f)
        need = {"object", "split", "label", "image", "mask"}
        if not need <= set(reader.fieldnames or ()):
            raise ClipadError(f"{split} lacks columns {', '.join(sorted(need - set(reader.fieldnames or ())))}")
        for row in reader:
            cat = row["object"]
            out.setdefault(cat, [])
            if row["split"] != "test":
                continue
            anomalous = row["label"].strip().lower() == "anomaly"
            mask = root / row["mask"] if anomalous and row["mask"].strip() else None
            mask = mask if mask is not None and mask.is_file() else None  # no mask: pixel metrics skipped
            out[cat].append(Sample(root / row["image"], int(anomalous), mask, row["label"], cat))
    return out
