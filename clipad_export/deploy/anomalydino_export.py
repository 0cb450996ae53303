"""AnomalyDINO's part of `clipad export` (method.md section 15).

``dino_source``: the good images read through the one image path (``clipad.deploy.reference_set``:
the same choice and checks as the reference mode), fitted with the official policy: the smaller
edge at ``--resolution``, the top-left crop to multiples of 14; their size fixes the graph's input
[H, W] (``DinoOptions.geometry``; S when they are square). Then the memory
baked (every patch, or the ``--memory-patches`` coreset bound), the model, the manifest's
``anomalydino`` record and weights record, and the writer of ``dino_memory.safetensors``
(float32 [M, W], unit rows: the graph's constant, kept so the PyTorch reference can be rebuilt).
No text vectors: the manifest has no ``rvs``/``prompts`` and no ``text_features.npy``. The
model is rebuilt from an artifact directory by ``clipad.deploy.rebuild.dino_reference``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors.torch import save_file

from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.data.geometry import Geometry
from clipad.deploy.export_config import ExportConfig
from clipad.deploy.manifest import DINO_MEMORY, AnomalyDinoEntry, FileWeights, RandomWeights, ReferenceImage
from clipad.deploy.rebuild import MEMORY_KEY
from clipad.deploy.reference_set import image_names, read_images, select_images
from clipad.deploy.source import Source
from clipad.methods.anomalydino import METHOD, DinoOptions
from clipad.model.dinov2 import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from clipad.core.progress import Tasks
    from clipad.model.dinov2 import DinoWeights


def weights_record(weights: DinoWeights) -> RandomWeights | FileWeights:
    """Random (seed), or the file read (``--weights`` or a cache's) with its sha256."""
    if weights.seed is not None:
        return RandomWeights(source="random", seed=weights.seed)
    path = Path(weights.source).resolve()
    return FileWeights(source="file", path=str(path), sha256=file_sha256(path))


def dino_source(weights: DinoWeights, cfg: ExportConfig, tasks: Tasks, timings: dict[str, float]) -> Source:
    """The AnomalyDINO model of ``cfg.category`` from ``cfg.reference``'s good images, and what
    the export writes beside its graph; ``timings`` gains ``reference_s``."""
    options = cfg.dino or DinoOptions()
    ref = cfg.reference
    if ref is None:  # validate(): the method needs good images
        raise ClipadError("--method anomalydino needs --reference GOOD_IMAGES")
    if weights.backbone != options.backbone:
        raise ValueError(f"weights of {weights.backbone} for --backbone {options.backbone}")
    step = tasks.add("memory of the good images", 1)
    t0 = time.perf_counter()
    refs = read_images(select_images(ref.source, ref.shots), options.geometry)
    masked = options.masked(cfg.category)
    model, memory = METHOD.build_model(
        weights.backbone, weights.state, refs.images, options.rotations, masked, ref.memory_patches, cfg.device
    )
    timings["reference_s"] = time.perf_counter() - t0
    step(1)
    tokens = memory.tokens.detach().cpu().contiguous()
    names = image_names(refs.paths)
    entry = AnomalyDinoEntry.create(
        backbone=options.backbone,
        resolution=options.resolution,
        rotations=options.rotations,
        masking=masked,
        masking_option=options.masking,
        images=[ReferenceImage.create(name=n, sha256=h) for n, h in zip(names, refs.sha256, strict=True)],
        shots=len(names),
        memory_patches=ref.memory_patches,
        patches=int(tokens.shape[0]),
        source_patches=memory.source_patches,
        width=int(tokens.shape[1]),
        coreset_radius=float(memory.radius),
        memory_bytes=tokens.numel() * tokens.element_size(),
        source_size=list(refs.source_size),
    )
    return Source(
        model=model,
        model_name=options.backbone,
        weights=weights_record(weights),
        geometry=Geometry(int(refs.images.shape[1]), int(refs.images.shape[2]), options.resolution),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        sigma=METHOD.default_sigma(""),
        write=lambda stage: save_file({MEMORY_KEY: tokens}, str(stage / DINO_MEMORY)),
        anomalydino=entry,
    )
