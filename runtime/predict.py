"""`clipad predict`: image files in, one prediction record per image (and optionally maps, masks,
overlays), through the one image path and the one scoring step."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from clipad.calibration.constants import Calibration
from clipad.core.errors import ClipadError
from clipad.core.owned import FolderKind, staged
from clipad.core.progress import Tasks
from clipad.data.colour import to_bgr
from clipad.data.geometry import ModelSize, geometry
from clipad.data.images import iter_image_batches, list_images
from clipad.runtime.backends import Backend
from clipad.runtime.overlay import overlay
from clipad.runtime.records import OutputFiles
from clipad.runtime.scoring import score_batch

PREDICTIONS = "predictions.jsonl"
_FILES = re.compile(rf"{re.escape(PREDICTIONS)}|maps/[^/]+\.npy|maps/[^/]+_mask\.png|overlays/[^/]+\.png")
PREDICTION_FILES = FolderKind("predictions", lambda rel: _FILES.fullmatch(rel) is not None)


@dataclass
class PredictResult:
    """images: records written; skipped: unreadable files (one message each)."""

    images: int = 0
    skipped: list[str] = field(default_factory=list)

    def warnings(self) -> list[str]:
        return [f"warning: {e}" for e in self.skipped]

    def describe(self, out: Path) -> str:
        """The summary line of predictions written to ``out``."""
        skipped = f", {len(self.skipped)} unreadable skipped" if self.skipped else ""
        return f"{self.images} predictions written to {out / PREDICTIONS}{skipped}"


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 1
    name = stem
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def _imwrite(path: Path, image: np.ndarray) -> None:
    # cv2.imwrite answers False (or raises cv2.error) instead of raising OSError
    if not cv2.imwrite(str(path), image):
        raise OSError("OpenCV could not write it (a folder of that name, or no space?)")


def _write(path: Path, shown: Path, save: Callable[[Path, np.ndarray], object], array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (in the staging folder) with ``save``; any failure is a
    ClipadError naming ``shown``, the file's place in the output folder."""
    try:
        save(path, array)
    except (OSError, cv2.error) as err:
        raise ClipadError(f"cannot write {shown}: {getattr(err, 'strerror', None) or err}") from None


def predict(
    backend: Backend,
    source: str,
    out: Path,
    size: ModelSize,
    cal: Calibration | None,
    tasks: Tasks,
    save_maps: bool = False,
    save_overlays: bool = False,
) -> PredictResult:
    """Write OUT/predictions.jsonl, one record per readable image in file order; with
    ``save_maps`` also maps/<stem>.npy (float32 [H, W]) and, calibrated, maps/<stem>_mask.png;
    with ``save_overlays`` overlays/<stem>.png (the part of the image the model saw:
    ``Geometry.inspected``). Each record names the files it wrote.

    All or nothing: OUT is built in a staging folder and swapped in whole when every file is
    written (``clipad.core.owned``: OUT must be new, empty or earlier predictions), so OUT holds
    one run's records and files, never a mix, also after a kill. A file that cannot be written,
    or no readable image at all, stops the command in one line (ClipadError) and leaves OUT as
    it was."""
    files, fit = list_images(source), geometry(size)
    advance = tasks.add("predict", len(files))
    used: set[str] = set()
    result = PredictResult()
    with staged(out, PREDICTION_FILES) as stage, open(stage / PREDICTIONS, "w", encoding="utf-8") as f:
        for sub in ("maps",) * save_maps + ("overlays",) * save_overlays:
            (stage / sub).mkdir()
        for batch in iter_image_batches(files, size, backend.max_batch, keep_originals=save_overlays):
            advance(batch.consumed)  # skipped files count as done
            result.skipped += batch.skipped
            if not batch.paths:
                continue
            amap, prob = backend(batch.images)
            preds = score_batch(amap, prob, cal, [str(p) for p in batch.paths])
            for i, (path, m, pred) in enumerate(zip(batch.paths, amap, preds, strict=False)):
                stem = _unique_stem(path, used)
                written = OutputFiles()
                if save_maps:
                    map_file = f"maps/{stem}.npy"
                    written = OutputFiles(map=map_file)
                    _write(stage / map_file, out / map_file, np.save, m.astype(np.float32))
                    if cal is not None:
                        mask_file = f"maps/{stem}_mask.png"
                        written = OutputFiles(map=map_file, mask=mask_file)
                        _write(stage / mask_file, out / mask_file, _imwrite, cal.mask_image(m))
                if save_overlays:
                    overlay_file = f"overlays/{stem}.png"
                    written = OutputFiles(written.map, written.mask, overlay_file)
                    assert batch.originals is not None  # kept: keep_originals=save_overlays
                    view = overlay(fit.inspected(batch.originals[i]), m, float(m.min()), float(m.max()))
                    _write(stage / overlay_file, out / overlay_file, _imwrite, to_bgr(view))
                f.write(json.dumps(pred.with_files(written).prediction()) + "\n")
                result.images += 1
        if not result.images:
            raise ClipadError(f"none of the {len(files)} images at {source} could be read ({result.skipped[0]})")
    return result
