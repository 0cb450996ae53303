"""`clipad calibrate`: run the exported model over calibration images and fix the constants.

Images are read, converted and resized exactly as the runtime reads them (the one image path,
``clipad.data.images``), through the same backend interface, so the constants describe the numbers
the runtime will see. The constants go into the manifest with one atomic write.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from clipad.calibration.constants import CALIBRATION_VERSION, MODEL_FILES
from clipad.calibration.thresholds import f1_threshold, fpr_threshold, min_images_for_fpr
from clipad.core.choices import Int8Backend, parse_choice
from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.core.progress import Tasks
from clipad.core.values import AGREEMENT, AUROC_DROP, TARGET_FPR
from clipad.data.folder import MASK_SUFFIX
from clipad.data.geometry import ModelSize, geometry
from clipad.data.images import IMAGE_SUFFIXES, ImageReadError, iter_image_batches, list_images, load_mask
from clipad.data.samples import check_mask
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import CalibrationConstants, CalibrationEntry, ParityFigures, QualityGate
from clipad.methods.base import ImageScore
from clipad.methods.registry import get_method
from clipad.model.fusion import map_max

PIXELS_PER_IMAGE = 16384  # pixels sampled per image for the pixel threshold (all when fewer)


@dataclass
class CalibrateConfig:
    """What `clipad calibrate` does: score constants from ``good`` (and labelled ``anomalous``
    images with ``masks``) at ``target_fpr``, and/or the INT8 graph from ``int8_images`` (default
    ``good``), at most ``int8_max_images``, for ``int8_backend`` (onnxruntime or openvino), kept
    at ``min_agreement`` or more, or with ``gate_data`` when its AUROC drop is at most
    ``max_auroc_drop`` points."""

    good: str | None = None
    anomalous: str | None = None
    masks: Path | None = None
    target_fpr: float = 0.01
    int8: bool = False
    int8_images: str | None = None
    int8_max_images: int = 64
    min_agreement: float = 0.9
    int8_backend: str = "onnxruntime"
    gate_data: Path | None = None
    max_auroc_drop: float = 0.5

    def check(self) -> None:
        """One-line errors for combinations that cannot work, before any model work."""
        if self.good is None and not self.int8:
            raise ClipadError("give --good IMAGES (score constants and thresholds) and/or --int8 --images IMAGES")
        if (self.anomalous is not None or self.masks is not None) and self.good is None:
            raise ClipadError("--anomalous and --masks need --good as well")
        if self.masks is not None and self.anomalous is None:
            raise ClipadError("--masks goes with --anomalous")
        TARGET_FPR.parse(self.target_fpr, "--target-fpr")
        if self.int8 and self.int8_images is None and self.good is None:
            raise ClipadError("--int8 needs calibration images: --images DIR (or --good DIR)")
        if self.gate_data is not None and not self.int8:
            raise ClipadError(
                "--gate-data goes with --int8 here (it judges the INT8 graph); "
                "`clipad export --gate-data` judges the others"
            )
        parse_choice(Int8Backend, self.int8_backend, "--int8-backend")
        if self.int8_backend != "onnxruntime" and not self.int8:
            raise ClipadError("--int8-backend goes with --int8 (it says which INT8 model to make)")
        AGREEMENT.parse(self.min_agreement, "--min-agreement")
        AUROC_DROP.parse(self.max_auroc_drop, "--max-auroc-drop")
        if self.int8_images is not None and not self.int8:
            raise ClipadError("--images gives the INT8 calibration images: it goes with --int8")
        for flag, spec in (("--good", self.good), ("--anomalous", self.anomalous), ("--images", self.int8_images)):
            if spec is not None:  # listed again where they are read; a wrong path fails here, before any model work
                try:
                    list_images(spec)
                except ClipadError as err:
                    raise ClipadError(f"{flag}: {err}") from None

    @property
    def int8_source(self) -> str | None:
        return self.int8_images or self.good


class ScoringModel(Protocol):
    """What calibration needs of a served model; every ``clipad.runtime`` backend is one.

    ``model(images)``: uint8 RGB [B, S, S, 3] -> (anomaly_map float32 [B, S, S], image_prob
    float32 [B]); ``describe()`` names it for the manifest."""

    max_batch: int

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def describe(self) -> str: ...


@dataclass
class Observations:
    """What the model gave on the calibration images, in file order.

    image_prob, map_max: float32 [N]; label: int8 [N] (0 good, 1 anomalous); pixels: float32
    [N, K] sampled anomaly_map values and pixel_label bool [N, K] (None without masks); files and
    the mask files read.
    """

    image_prob: np.ndarray
    map_max: np.ndarray
    label: np.ndarray
    pixels: np.ndarray
    pixel_label: np.ndarray | None
    files: list[str]
    mask_files: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def spec_root(spec: str) -> Path:
    """The folder image paths are relative to: the folder itself, a file's folder, or a glob's
    leading part without wildcards (``test/*/*.png`` -> ``test``)."""
    p = Path(spec)
    if p.is_dir():
        return p
    if p.is_file():
        return p.parent
    parts = []
    for part in p.parts:
        if any(c in part for c in "*?["):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def find_mask(image: Path, spec: str, masks_root: Path) -> Path | None:
    """The mask of ``image`` (found via ``spec``): the same path relative to the spec's root
    under ``masks_root``, named like the image or with a ``_mask`` suffix (MVTec), any extension."""
    rel = image.relative_to(spec_root(spec))
    for stem in (rel.stem, rel.stem + MASK_SUFFIX):
        for suffix in sorted(IMAGE_SUFFIXES):
            p = masks_root / rel.parent / (stem + suffix)
            if p.is_file() and not p.samefile(image):  # masks beside their images: not the image itself
                return p
    return None


def masked_images(spec: str, masks_root: Path) -> dict[Path, Path]:
    """The anomalous images of ``spec``, each with its mask (``find_mask``), checked before any
    model work as eval checks its masks (``check_mask``: same size as the image). A listed file
    that is another listed image's mask (``<name>_mask`` beside it, the folder layout) is a mask,
    not an image; an image without a mask is a one-line error."""
    listed = list_images(spec)
    found = {image: find_mask(image, spec, masks_root) for image in listed}
    masks = {m.resolve() for m in found.values() if m is not None}
    pairs = {}
    for image, mask in found.items():
        if image.resolve() in masks:
            continue
        if mask is None:
            raise ClipadError(f"no mask for {image} under {masks_root} (same relative path, name or name_mask)")
        check_mask(image, mask)
        pairs[image] = mask
    return pairs


def observe(
    backend: ScoringModel, good: str, anomalous: str | None, masks: Path | None, size: ModelSize, tasks: Tasks
) -> Observations:
    """Run ``backend`` over the good (label 0) and anomalous (label 1) images, fitted to ``size``."""
    sample_idx = None
    fit = geometry(size)
    n_pixels = fit.height * fit.width
    if n_pixels > PIXELS_PER_IMAGE:
        sample_idx = np.sort(np.random.default_rng(0).choice(n_pixels, PIXELS_PER_IMAGE, replace=False))
    probs, maxes, labels, pixels, pixel_labels, files, mask_files, skipped = [], [], [], [], [], [], [], []
    mask_of = masked_images(anomalous, masks) if anomalous and masks is not None else {}
    listed = [(list_images(good), 0)] + ([(list(mask_of) or list_images(anomalous), 1)] if anomalous else [])
    advance = tasks.add("calibration images", sum(len(paths) for paths, _ in listed))
    for paths, label in listed:
        for batch in iter_image_batches(paths, fit, backend.max_batch):
            advance(batch.consumed)
            skipped += batch.skipped
            if not batch.paths:
                continue
            amap, prob = backend(batch.images)
            flat = amap.reshape(len(amap), -1)
            probs.append(prob)
            maxes.append(map_max(amap))
            labels += [label] * len(batch.paths)
            files += [str(p) for p in batch.paths]
            pixels.append(flat if sample_idx is None else flat[:, sample_idx])
            if masks is not None:
                for path in batch.paths:
                    if label == 0:
                        m = np.zeros(n_pixels, bool)
                    else:
                        mask_path = mask_of[path]
                        mask_files.append(mask_path)
                        try:
                            m = load_mask(mask_path, fit).ravel()
                        except ImageReadError as err:
                            raise ClipadError(f"cannot read mask {mask_path}: {err}") from None
                    pixel_labels.append(m if sample_idx is None else m[sample_idx])
    if not files:
        raise ClipadError("none of the calibration images could be read")
    return Observations(
        np.concatenate(probs),
        np.concatenate(maxes),
        np.array(labels, np.int8),
        np.concatenate(pixels),
        np.stack(pixel_labels) if masks is not None else None,
        files,
        mask_files,
        skipped,
    )


def _range(values: np.ndarray, name: str) -> tuple[float, float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    if not hi > lo:
        raise ClipadError(
            f"all {len(values)} calibration images give the same {name} ({lo:.6g}): cannot normalise; "
            "use varied images of the part (are they copies of one image?)"
        )
    return lo, hi


def set_hash(files: list[str], extra: list[Path]) -> str:
    """sha256 over the content hashes of the calibration images (and masks), order-independent."""
    digests = sorted(file_sha256(Path(f)) for f in [*files, *map(str, extra)])
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def constants(obs: Observations, target_fpr: float, image_score: ImageScore) -> tuple[CalibrationConstants, list[str]]:
    """The manifest's calibration entry without provenance, and warnings for the user;
    ``image_score``: the method's (``clipad.methods``: ``Method.image_score``), which the
    threshold is set on."""
    warnings = []
    good = obs.label == 0
    if not good.any():
        raise ClipadError("calibration needs good images (--good)")
    prob_range = _range(obs.image_prob, "image_prob")
    max_range = _range(obs.map_max, "anomaly map maximum")
    fused = image_score.fuse(obs.image_prob, obs.map_max, prob_range, max_range)
    score_range = _range(fused, "fused score")
    n_good, n_bad = int(good.sum()), int((~good).sum())
    achieved: dict[str, float] = {}
    if n_bad:
        threshold, f1 = f1_threshold(obs.label, fused)
        method = "F1-optimal on the labelled images"
        achieved["f1"] = f1
    else:
        need = min_images_for_fpr(target_fpr)
        if n_good < need:
            warnings.append(
                f"only {n_good} good images: a false-positive rate of {target_fpr:g} needs at least {need} "
                f"(about {10 * need} for +-30%); the threshold sits above the highest good score"
            )
        threshold = fpr_threshold(fused[good], target_fpr)
        method = f"false-positive rate {target_fpr:g} on the good images"
    achieved["fpr"] = float(np.mean(fused[good] >= threshold))
    if n_bad:
        achieved["recall"] = float(np.mean(fused[~good] >= threshold))
    defect_pixels = obs.pixel_label is not None and obs.pixel_label.any()
    if obs.pixel_label is not None and not defect_pixels:
        warnings.append("the masks mark no defect pixel: the pixel threshold comes from the good images instead")
    if defect_pixels:
        assert obs.pixel_label is not None  # defect_pixels implies masks
        pixel_threshold, pixel_f1 = f1_threshold(obs.pixel_label, obs.pixels)
        pixel_method = "F1-optimal on the masks' pixels"
        achieved["pixel_f1"] = pixel_f1
    else:
        pixel_threshold = fpr_threshold(obs.pixels[good], target_fpr)
        pixel_method = f"false-positive rate {target_fpr:g} on the good images' pixels"
    achieved["pixel_fpr"] = float(np.mean(obs.pixels[good] >= pixel_threshold))
    entry = CalibrationConstants.create(
        version=CALIBRATION_VERSION,
        image_prob_range=list(prob_range),
        map_max_range=list(max_range),
        threshold=float(threshold),
        score_range=list(score_range),
        pixel_threshold=float(pixel_threshold),
        method=method,
        pixel_method=pixel_method,
        target_fpr=target_fpr,
        achieved={k: float(v) for k, v in achieved.items()},
        set={"good": n_good, "anomalous": n_bad, "skipped": len(obs.skipped)},
    )
    return entry, warnings


def refuse_reference_images(art: Artifacts, specs: list[str]) -> None:
    """One line when a calibration image is one of the artifacts' reference images (method.md 14:
    its reference distances are zero, so it would fix the ranges and threshold far too low)."""
    from clipad.deploy.reference_set import reference_overlap

    for spec in specs:
        overlap = reference_overlap(art.manifest.reference, list_images(spec))
        if overlap:
            raise ClipadError(
                f"{len(overlap)} calibration image(s) at {spec} are reference images of these artifacts "
                f"(e.g. {overlap[0]}; sha256 match): their distances are zero; calibrate on other good images"
            )


def calibrate(
    art: Artifacts,
    backend: ScoringModel,
    good: str,
    tasks: Tasks,
    anomalous: str | None = None,
    masks: Path | None = None,
    target_fpr: float = 0.01,
) -> tuple[CalibrationEntry, list[str]]:
    """Observe, fix the constants and write them into the manifest (one atomic write); returns
    (the manifest's new calibration entry, warnings)."""
    CalibrateConfig(good=good, anomalous=anomalous, masks=masks, target_fpr=target_fpr).check()
    refuse_reference_images(art, [spec for spec in (good, anomalous) if spec is not None])
    with art.writing():
        obs = observe(backend, good, anomalous, masks, art.geometry, tasks)
        fixed, warnings = constants(obs, target_fpr, get_method(art.manifest.mode).image_score)
        entry = CalibrationEntry.create(
            **{
                **fixed.model_dump(),
                "set": fixed.set.replace(sha256=set_hash(obs.files, obs.mask_files)),
                "backend": backend.describe(),
                "model_files": {n: art.manifest.files.get(n) for n in MODEL_FILES},
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        warnings += [f"skipped: {s}" for s in obs.skipped]
        art.update(art.manifest.with_calibration(entry))
    return entry, warnings


def describe_calibration(entry: CalibrationEntry, manifest: Path) -> str:
    """The line `clipad calibrate` prints for the calibration written to ``manifest``."""
    a, n = entry.achieved, entry.set
    extra = f", F1 {a['f1']:.3f}, recall {a['recall']:.3f}" if "f1" in a else ""
    return (
        f"calibrated on {n.good} good + {n.anomalous} anomalous images ({entry.method}): threshold "
        f"{entry.threshold:.4f} on the fused score, false-positive rate there {a['fpr']:.3f}{extra}; "
        f"pixel threshold {entry.pixel_threshold:.4g}; written to {manifest}"
    )


def describe_int8(written: str, n_images: int, f: ParityFigures, gate: QualityGate | None, backend: str) -> list[str]:
    """The lines `clipad calibrate --int8` prints: the INT8 model ``written`` from ``n_images``, its parity
    figures against FP32 and, with --gate-data, its quality gate."""
    from clipad.deploy.quality_gate import describe_gate

    lines = [
        f"{written} written ({n_images} calibration images): vs FP32 rel L2 {f.rel_l2:.2e}, "
        f"image_prob err {f.prob_max_abs:.2e}, top-1% agreement {f.top1pct_agreement:.3f}"
    ]
    return lines + ([describe_gate(f"{backend} int8", gate)] if gate is not None else [])
