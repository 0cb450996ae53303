"""`clipad predict`: images in, one prediction record per image (and optionally maps, overlays)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from clipad.core.atomic import atomic_path
from clipad.core.progress import Tasks
from clipad.data.colour import to_bgr
from clipad.data.images import resize_to_model
from clipad.runtime.backends import Backend
from clipad.runtime.overlay import overlay
from clipad.runtime.scoring import Calibration, score_batch
from clipad.runtime.sources import ImageFilesSource, file_batches


def _unique_stem(path: str, used: set[str]) -> str:
    stem, n = Path(path).stem, 1
    name = stem
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def predict(backend: Backend, source: str, out: Path, image_size: int, cal: Calibration | None, tasks: Tasks,
            save_maps: bool = False, save_overlays: bool = False) -> dict:
    """Write OUT/predictions.jsonl (+ maps/<stem>.npy and, calibrated, maps/<stem>_mask.png; overlays/<stem>.png).

    Returns counts."""
    src = ImageFilesSource(source)
    out.mkdir(parents=True, exist_ok=True)
    if save_maps:
        (out / "maps").mkdir(exist_ok=True)
    if save_overlays:
        (out / "overlays").mkdir(exist_ok=True)
    advance = tasks.add("predict", len(src.files))
    used: set[str] = set()
    n = 0
    with atomic_path(out / "predictions.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for frames, consumed in file_batches(src, backend.max_batch):
            advance(consumed)  # skipped files count as done
            if not frames:
                break
            amap, prob = backend(np.stack([resize_to_model(fr.image, image_size) for fr in frames]))
            for fr, m, rec in zip(frames, amap, score_batch(amap, prob, cal)):
                f.write(json.dumps({"source": fr.source, **rec}) + "\n")
                stem = _unique_stem(fr.source, used)
                if save_maps:
                    np.save(out / "maps" / f"{stem}.npy", m.astype(np.float32))
                    if cal is not None:
                        cv2.imwrite(str(out / "maps" / f"{stem}_mask.png"), cal.mask_image(m))
                if save_overlays:
                    cv2.imwrite(str(out / "overlays" / f"{stem}.png"), to_bgr(overlay(fr.image, m, float(m.min()), float(m.max()))))
                n += 1
    return {"images": n, "skipped": src.stats.bad_frames, "skipped_files": src.stats.events}
