"""The reference images of an export: choosing and reading them, baking the memory, the
manifest's ``reference`` record, the memory file, and the overlap check calibration uses.

Rules (method.md section 14, all one-line errors): there must be at least one readable image;
an unreadable reference image stops the export (it is not skipped: the set is small and chosen
by hand); all reference images must have the size of the first (and, for `clipad reference add`,
the size recorded at export): a different size means another camera or crop, and the squash
resize of the one image path would then show the memory another geometry than the line's
frames; K (``--shots``) may not exceed the images found; two identical files are refused.
Every image is then read and resized through the one image path (``clipad.data.images``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.data.geometry import Geometry, ModelSize, geometry
from clipad.data.images import ImageReadError, list_images, read_rgb
from clipad.deploy.manifest import ReferenceEntry, ReferenceImage, ReferenceScore
from clipad.model.reference import DEFAULT_MEMORY_PATCHES, STAGE_COMBINE, Baked, Memory, bake
from clipad.model.sdp import SDPModel

MEMORY_KEY = "memory"


@dataclass
class ReferenceConfig:
    """``source``: folder, file or glob of good images; ``shots``: K, the first K in sorted order
    (None: all); ``memory_patches``: N per stage (None: the method's default, 1024 in the
    reference mode, every patch for AnomalyDINO).
    ``prior``: the existing reference of the artifacts (`clipad reference add`)."""

    source: str
    shots: int | None = None
    memory_patches: int | None = None
    prior: Prior | None = None

    def check(self) -> None:
        if self.shots is not None and self.shots < 1:
            raise ClipadError(f"--shots must be at least 1, got {self.shots}")
        if self.memory_patches is not None and self.memory_patches < 1:
            raise ClipadError(f"--memory-patches must be at least 1, got {self.memory_patches}")


@dataclass(frozen=True)
class Prior:
    """An existing reference: its memory and manifest record."""

    memory: Memory
    entry: ReferenceEntry


@dataclass(frozen=True)
class ReferenceImages:
    """Reference images read for the model: uint8 [K, S, S, 3], their files and sha256, and the
    original [width, height] they share."""

    images: np.ndarray
    paths: list[Path]
    sha256: list[str]
    source_size: tuple[int, int]


def select_images(source: str, shots: int | None) -> list[Path]:
    """The reference files: all images at ``source`` (sorted), or the first ``shots`` of them."""
    try:
        paths = list_images(source)
    except ClipadError:
        raise ClipadError(
            f"no reference images found at {source} (--reference takes a folder, file or glob of good images)"
        ) from None
    if shots is not None and shots > len(paths):
        raise ClipadError(f"--shots {shots} is more than the {len(paths)} reference images at {source}")
    return paths[:shots] if shots is not None else paths


def read_images(
    paths: list[Path], size: ModelSize | Callable[[int, int], Geometry], expect_size: tuple[int, int] | None = None
) -> ReferenceImages:
    """Read every file through the one image path, fitted to ``size`` (S, a Geometry, or the
    function giving the Geometry from the first image's height and width); one line for an
    unreadable file, a size that differs from ``expect_size`` (default: the first image's) or a
    file given twice."""
    fit = None if callable(size) else geometry(size)
    images: list[np.ndarray] = []
    hashes: list[str] = []
    first = expect_size
    for p in paths:
        try:
            rgb = read_rgb(p)
        except ImageReadError as err:
            raise ClipadError(f"reference image unreadable: {err}") from None
        wh = (rgb.shape[1], rgb.shape[0])
        if first is None:
            first = wh
        elif wh != tuple(first):
            raise ClipadError(
                f"reference image {p} is {wh[0]}x{wh[1]} but the reference set is {first[0]}x{first[1]}: "
                "use images of the same camera and crop"
            )
        sha = file_sha256(p)
        if sha in hashes:
            raise ClipadError(
                f"reference image {p} is identical to {paths[hashes.index(sha)]}: give each good part once"
            )
        hashes.append(sha)
        if fit is None:
            fit = cast(Callable[[int, int], Geometry], size)(rgb.shape[0], rgb.shape[1])
        images.append(fit.fit(rgb))
    stacked = np.stack(images)  # fails on an empty list, before ``first`` is read
    assert first is not None  # the first image's size when expect_size is None
    return ReferenceImages(stacked, list(paths), hashes, (int(first[0]), int(first[1])))


def image_names(paths: list[Path]) -> list[str]:
    """Paths relative to their common folder (just the file name for one folder)."""
    resolved = [p.resolve() for p in paths]
    root = Path(os.path.commonpath([p.parent for p in resolved]))
    return [str(p.relative_to(root)) for p in resolved]


def bake_reference(model: SDPModel, cfg: ReferenceConfig, only: bool) -> tuple[Baked, ReferenceEntry]:
    """Read the reference images, bake the memory into a ReferenceModel around ``model`` and
    make the manifest's record; ``only``: the map is the reference map alone (a method without a
    text path, method.md 14), else it is added to ``model``'s map."""
    cfg.check()
    prior = cfg.prior
    paths = select_images(cfg.source, cfg.shots)
    # the manifest's source_size is validated as exactly two sizes
    source_size = cast(tuple[int, int], tuple(prior.entry.source_size)) if prior else None
    refs = read_images(paths, model.image_size, source_size)
    bound = DEFAULT_MEMORY_PATCHES if cfg.memory_patches is None else cfg.memory_patches
    if prior is not None:
        known = prior.entry.sha256s()
        again = [p for p, h in zip(refs.paths, refs.sha256, strict=False) if h in known]
        if again:
            raise ClipadError(f"{again[0]} is already a reference image of these artifacts")
    baked = bake(
        model,
        refs.images,
        bound,
        only,
        prior.memory if prior else None,
        prior.entry.score.maxima if prior else None,
    )
    old = list(prior.entry.images) if prior else []
    new = [ReferenceImage.create(name=n, sha256=h) for n, h in zip(image_names(refs.paths), refs.sha256, strict=False)]
    mem, score = baked.memory, baked.score
    entry = ReferenceEntry.create(
        images=old + new,
        shots=len(old) + len(new),
        memory_patches=bound,
        patches_per_stage=int(mem.tokens.shape[1]),
        source_patches=mem.source_patches,
        coreset_radius=[float(r) for r in mem.radius],
        memory_bytes=mem.nbytes,
        source_size=list(refs.source_size),
        stages=STAGE_COMBINE,
        score=ReferenceScore.create(center=score.center, scale=score.scale, maxima=score.maxima, method=score.method),
    )
    return baked, entry


def save_memory(path: Path, memory: Memory) -> None:
    """The memory as safetensors (no pickle): ``memory`` float32 [S, M, W]."""
    save_file({MEMORY_KEY: memory.tokens.detach().cpu().contiguous()}, str(path))


def load_memory(path: Path, entry: ReferenceEntry) -> Memory:
    """The memory file back, with the radius and counts of its manifest record."""
    try:
        tokens = load_file(str(path))[MEMORY_KEY]
    except (OSError, KeyError, ValueError) as err:
        raise ClipadError(f"cannot read the reference memory {path}: {err}") from None
    if tokens.dtype != torch.float32 or tokens.dim() != 3 or tokens.shape[1] != entry.patches_per_stage:
        raise ClipadError(f"{path} is not the memory its manifest describes ({list(tokens.shape)}, {tokens.dtype})")
    return Memory(tokens, list(entry.coreset_radius), entry.source_patches)


def reference_overlap(entry: ReferenceEntry | None, paths: list[Path]) -> list[Path]:
    """The files among ``paths`` that are reference images of ``entry`` (by sha256)."""
    if entry is None:
        return []
    known = entry.sha256s()
    return [p for p in paths if file_sha256(p) in known]
