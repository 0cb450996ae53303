"""AnomalyDINO: few-shot detection with DINOv2 patch features (method.md section 15).

The graph (``clipad.model.anomalydino.AnomalyDinoModel``) holds the backbone, the good images'
memory, the optional foreground mask and the official top-1% score; image_prob is that score
(a cosine distance, not a probability), and the method's image score is it alone
(``ImageScore.PROB``). Needs good images; no text path, no heads; DINOv2 weights (``load``).

`clipad eval --method anomalydino --shots K` runs the official protocol (``draw``); `clipad
export --method anomalydino --reference GOOD_IMAGES` bakes the memory into one graph
(``clipad.deploy.anomalydino_export``), served by ONNX Runtime, OpenVINO, the torch backend,
a Triton repository (``--triton-repo``) and a TensorRT engine (``--engine``: the graphs pass the
parser check, the build itself is not verified here). `clipad bench` takes its FLOPs from
``graph_flops``. Both commands check the options with ``dino_options``. Images keep their aspect
ratio as in the official code (``preprocess``: the smaller edge resized to ``resolution``, then
the top-left crop to multiples of 14); the input's fixed size is that of the good images
(``DinoOptions.geometry``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from clipad.core.choices import DinoBackbone, Masking
from clipad.core.errors import ClipadError
from clipad.core.values import MAX_IMAGE_SIZE
from clipad.methods.base import EvalProtocol, GraphFlops, ImageScore, Method, Preprocess

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import torch

    from clipad.data.geometry import Geometry
    from clipad.model.anomalydino import AnomalyDinoModel, DinoMemory
    from clipad.model.dinov2 import DinoWeights
    from clipad.model.flops import ViTDims
    from clipad.model.loading import WeightSpec

DEFAULT_RESOLUTION = 448
PATCH = 14  # DINOv2's patch size: the input side is a multiple of it
# The official "agnostic" preset: masked categories (MVTec AD: those below; VisA: all of them).
MVTEC_MASKED = frozenset({"capsule", "hazelnut", "pill", "screw", "toothbrush"})
MVTEC = frozenset(
    {"bottle", "cable", "carpet", "grid", "leather", "metal_nut", "tile", "transistor", "wood", "zipper"} | MVTEC_MASKED
)
VISA = frozenset(
    {"candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2"}
    | {"pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"}
)


def official_references(good: list[Path], shots: int, seed: int) -> list[Path]:
    """The official few-shot draw: ``sorted(good)[seed * shots:(seed + 1) * shots]`` (sorted by
    file name, as the official ``sorted(os.listdir(...))``); a one-line ClipadError when the
    folder holds too few."""
    from clipad.core.errors import ClipadError

    chosen = sorted(good, key=lambda p: p.name)[seed * shots : (seed + 1) * shots]
    if len(chosen) < shots:
        raise ClipadError(
            f"--shots {shots} with shot seed {seed} needs {(seed + 1) * shots} good training images, "
            f"the folder has {len(good)}"
        )
    return chosen


def masking_default(category: str) -> bool:
    """`--masking auto`: the official agnostic table for MVTec AD and VisA names, off otherwise."""
    return category in MVTEC_MASKED or category in VISA


@dataclass(frozen=True)
class DinoOptions:
    """AnomalyDINO's choices (`--backbone`, `--resolution`, `--rotations`, `--masking`):
    ``resolution`` px, the smaller edge images are resized to (a multiple of 14); ``rotations``:
    each good image also rotated by 45, ..., 315 degrees in the memory."""

    backbone: DinoBackbone = "dinov2_vits14"
    resolution: int = DEFAULT_RESOLUTION
    rotations: bool = False
    masking: Masking = "auto"

    def __post_init__(self) -> None:
        from clipad.core.choices import parse_choice

        parse_choice(DinoBackbone, self.backbone, "--backbone")
        parse_choice(Masking, self.masking, "--masking")
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < PATCH:
            raise ClipadError(f"--resolution must be a whole number of pixels >= {PATCH}, got {self.resolution}")
        if self.resolution % PATCH or self.resolution > MAX_IMAGE_SIZE:
            raise ClipadError(
                f"--resolution must be a multiple of {PATCH} (DINOv2's patch) up to {MAX_IMAGE_SIZE}, "
                f"e.g. 224, 336 or 448, got {self.resolution}"
            )

    def geometry(self, height: int, width: int) -> Geometry:
        """The input for good images of ``height`` x ``width`` px: the smaller edge at
        ``resolution``, each side floored to a multiple of 14 (method.md 15.1)."""
        from clipad.data.geometry import Geometry

        return Geometry.smaller_edge(self.resolution, PATCH, height, width)

    def masked(self, category: str) -> bool:
        """Whether the foreground mask is on for ``category``."""
        return masking_default(category) if self.masking == "auto" else self.masking == "on"


def dino_options(
    method: Method,
    spec: WeightSpec,
    backbone: str | None,
    resolution: int | None,
    rotations: bool,
    masking: str | None,
    clip_only: Mapping[str, bool],
) -> DinoOptions | None:
    """AnomalyDINO's options of one command (`clipad eval`, `clipad export`) for ``method``: None
    for another method. ``backbone``, ``resolution``, ``masking``: None when not given.
    One-line ClipadErrors when they are given to another method, or when an option of the CLIP
    methods is given to AnomalyDINO (it would be ignored): ``spec``'s --model, --pretrained,
    --cache-dir, and ``clip_only``: the command's own (option words -> given)."""
    from clipad.model.loading import DEFAULT_MODEL, DEFAULT_PRETRAINED

    given = {
        "--backbone": backbone is not None,
        "--resolution": resolution is not None,
        "--rotations": rotations,
        "--masking": masking is not None,
    }
    if method.backbone != "dinov2":
        if any(given.values()):
            raise ClipadError(f"{', '.join(k for k, v in given.items() if v)}: only for --method anomalydino")
        return None
    unused = [
        k
        for k, v in {
            "--model (anomalydino takes --backbone)": spec.model != DEFAULT_MODEL,
            "--pretrained": spec.pretrained != DEFAULT_PRETRAINED,
            "--cache-dir": spec.cache_dir is not None,
            **clip_only,
        }.items()
        if v
    ]
    if unused:
        raise ClipadError(
            f"--method anomalydino uses no {', '.join(unused)}: leave {'it' if len(unused) == 1 else 'them'} out"
        )
    d = DinoOptions()
    return DinoOptions(  # the words are checked by DinoOptions
        cast(DinoBackbone, d.backbone if backbone is None else backbone),
        d.resolution if resolution is None else resolution,
        rotations,
        cast(Masking, d.masking if masking is None else masking),
    )


class AnomalyDino(Method):
    name = "anomalydino"
    summary = "few-shot DINOv2 nearest neighbours (--reference, --shots)"
    text_path = False
    needs_reference = True
    image_score = ImageScore.PROB
    preprocess = Preprocess.SMALLER_EDGE
    eval_protocol = EvalProtocol.FEW_SHOT
    backbone = "dinov2"

    def manifest_error(self, heads: bool, reference: bool, text: bool = False, dino: bool = True) -> str | None:
        """No heads, no text vectors (rvs, prompts), no CLIP reference memory: its own record."""
        if heads:
            return "heads_sha256: mode anomalydino takes no heads (sha256 and file)"
        if text:
            return "rvs: mode anomalydino has no text vectors (no rvs, no prompts)"
        if reference:
            return "reference: mode anomalydino keeps its memory in its own record (anomalydino)"
        if not dino:
            return "anomalydino: mode anomalydino needs its record (backbone, memory, reference images)"
        return None

    def draw(self, good: list[Path], shots: int, seed: int) -> list[Path]:
        """The official few-shot draw (``official_references``)."""
        return official_references(good, shots, seed)

    def default_sigma(self, dataset: str) -> float:
        """The official map blur, sigma 4 px at the map's size (fixed in the graph)."""
        from clipad.model.anomalydino import SIGMA

        return SIGMA

    def load(self, spec: WeightSpec, device: str | torch.device = "cpu") -> DinoWeights:  # type: ignore[override]
        """The DINOv2 state dict of ``spec.model`` (a backbone name): ``--random-weights``,
        ``--weights FILE``, else the torch.hub or Hugging Face cache; nothing is downloaded."""
        from clipad.model.dinov2 import load_state

        return load_state(spec.model, spec.weights, spec.random_weights, spec.seed)

    def flops(self, dims: ViTDims, memory_patches: int = 0) -> dict[str, int]:
        """The ViT (original path only, all tokens through the final norm), the memory product
        2 P M W, and the map's two constant products; the mask's Gram matrix and squarings are
        counted by ``mask_flops``."""
        from clipad.model.flops import original_block_flops, patch_embed_flops, with_total

        p, h, w = dims.patches, dims.image_size, dims.image_width or dims.image_size
        return with_total(
            {
                "patch_embed": patch_embed_flops(dims),
                "original_path": dims.layers * original_block_flops(dims),
                "memory": 2 * p * memory_patches * dims.width,
                # rows [H, gh] @ map [gh, gw], then @ cols^T [gw, W] (the blur is folded into both)
                "upsample_blur": 2 * h * dims.grid_width * (dims.grid + w),
            }
        )

    def graph_flops(self, reference: AnomalyDinoModel, image_size: int) -> GraphFlops:
        """``flops`` of the export's backbone at its input size (the reference's [H, W]; a square
        ``image_size`` is the same) and its memory's M patches, plus the foreground mask's ``mask``
        part when the graph masks; no plain encoding (no dual path)."""
        from clipad.model.flops import with_total

        dims = reference.vit.arch.dims(*reference.size)
        parts = self.flops(dims, int(reference.memory.shape[0]))
        if not reference.masking:
            return GraphFlops(parts, dims, None)
        parts = {k: v for k, v in parts.items() if k != "total"} | {"mask": mask_flops(dims.width, dims.patches)}
        return GraphFlops(with_total(parts), dims, None)

    def build_model(
        self,
        backbone: str,
        state: dict,
        references: np.ndarray,
        rotations: bool,
        masking: bool,
        max_patches: int | None = None,
        device: str | torch.device = "cpu",
    ) -> tuple[AnomalyDinoModel, DinoMemory]:
        """The model of one category from good images uint8 [K, H, W, 3] (H, W multiples of 14:
        the export's fixed size) and a DINOv2 state dict in the official naming, and the memory
        it baked (its size and coverage: the export's record); ``max_patches``: the memory's
        coreset bound (None: every patch, the official protocol)."""
        from clipad.model.anomalydino import AnomalyDinoModel, build_memory
        from clipad.model.dinov2 import DinoFeatures

        features = DinoFeatures(backbone, state, (int(references.shape[1]), int(references.shape[2]))).to(device)
        memory = build_memory(features, references, rotations, max_patches)
        return AnomalyDinoModel(features, memory.tokens, masking).to(device).eval(), memory

    def from_memory(
        self,
        backbone: str,
        state: dict,
        size: tuple[int, int],
        memory: torch.Tensor,
        masking: bool,
        device: str | torch.device = "cpu",
    ) -> AnomalyDinoModel:
        """The model at the input size ``size`` (H, W px) around a memory float32 [M, W] of unit
        rows (baked, or read back from an export: ``clipad.deploy.rebuild``)."""
        from clipad.model.anomalydino import AnomalyDinoModel
        from clipad.model.dinov2 import DinoFeatures

        features = DinoFeatures(backbone, state, size)
        return AnomalyDinoModel(features, memory, masking).to(device).eval()


def mask_flops(width: int, patches: int) -> int:
    """The foreground mask per image: the Gram matrix 2 P W^2, 6 squarings 2 W^3 each, 2 power
    steps and the projection 2 W^2 + 2 P W each (clipad.model.anomalydino.first_component)."""
    from clipad.model.anomalydino import POLISH, SQUARINGS

    return 2 * patches * width**2 + SQUARINGS * 2 * width**3 + POLISH * 2 * width**2 + 2 * patches * width


METHOD = AnomalyDino()
