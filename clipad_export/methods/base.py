"""The method interface: what every registered method provides (docs/architecture.md, "How to add
a method").

The torch-free parts (the choices, ``image_score``, ``preprocess``, the option and manifest rules)
are class attributes and plain methods that serving, calibration and the CLI read; the parts that
need torch (``load``, ``build``, ``flops``) import it when called.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from clipad.core.choices import Method as MethodName
from clipad.core.errors import ClipadError

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np
    import torch

    from clipad.model.flops import ViTDims
    from clipad.model.fusion import Range
    from clipad.model.heads import Heads
    from clipad.model.loading import LoadedModel, WeightSpec
    from clipad.model.sdp import SDPModel


class ImageScore(StrEnum):
    """How a method's image score is made from its two image-level signals (numpy only, imported
    when called: the CLI and `clipad doctor` read the registry without numpy)."""

    PROB_PLUS_MAX = "prob+max"  # minmax(image_prob) + minmax(map_max) (method.md section 6)
    PROB = "prob"  # minmax(image_prob) alone: the method's own image score (AnomalyDINO's top-1% mean, method.md 15)

    def fuse(self, image_prob: np.ndarray, map_max: np.ndarray, prob_range: Range, max_range: Range) -> np.ndarray:
        """image_prob [N], map_max [N] and their ranges -> the image score, float64 [N]."""
        from clipad.model.fusion import fused_score, minmax

        if self is ImageScore.PROB:
            return minmax(image_prob, *prob_range)
        return fused_score(image_prob, map_max, prob_range, max_range)


class Preprocess(StrEnum):
    """How an image of any size becomes the model's input (``clipad.data.geometry.Geometry``, made
    from the manifest by ``Manifest.geometry``)."""

    SQUASH = "squash"  # resized to image_size x image_size, aspect ratio not kept (method.md section 2)
    SMALLER_EDGE = "smaller-edge"  # smaller edge to the resolution, top-left crop (method.md 15.1)


class EvalProtocol(StrEnum):
    """What `clipad eval` runs for a method."""

    ZERO_SHOT = "zero-shot"  # the test split scored as it is; --shots K adds a K-shot reference memory
    FEW_SHOT = "few-shot"  # only with --shots K: K good training images per category and seed (method.md 14)


@dataclass(frozen=True)
class GraphFlops:
    """FLOPs of one image through an exported graph (`clipad bench`'s ``flops``): ``per_image``,
    by part with their ``total``; ``dims``, the ViT's shape counted from; ``plain_encoding``, a
    plain open_clip image encoding of the same ViT, what the CLIP methods' dual path is set
    against (None: the method has no dual path)."""

    per_image: dict[str, int]
    dims: ViTDims
    plain_encoding: int | None


class Method(ABC):
    """One anomaly-detection method: uint8 RGB [B, H, W, 3] images in, (anomaly_map float32
    [B, H, W], image_prob float32 [B]) out, as the PyTorch reference and as its exported graph.

    Class attributes: ``name`` (the ``--method`` word and the manifest's ``mode``), ``summary``
    (a few words: the help of ``--method``), ``takes_heads`` (SDP+ heads: needed exactly when true),
    ``text_path`` (false: no text vectors in the maps, the reference memory alone),
    ``needs_reference`` (good images needed: ``--reference`` on export, ``--shots`` on eval),
    ``preprocess``, ``image_score`` (how calibration and the runtime fuse image_prob with the map
    maximum), ``eval_protocol``, ``backbone`` (whose weights ``load`` reads: open_clip's CLIP, or
    DINOv2 for AnomalyDINO, whose few-shot model ``clipad.evaluation.shots`` builds from the good
    images alone), ``exported`` (false: `clipad export` refuses the method in one line),
    ``refused_targets`` (the export targets not built for it yet: "--engine", "--openvino",
    "--triton-repo"; each refused in one line).
    """

    name: ClassVar[MethodName]
    summary: ClassVar[str]
    takes_heads: ClassVar[bool] = False
    text_path: ClassVar[bool] = True
    needs_reference: ClassVar[bool] = False
    preprocess: ClassVar[Preprocess] = Preprocess.SQUASH
    image_score: ClassVar[ImageScore] = ImageScore.PROB_PLUS_MAX
    eval_protocol: ClassVar[EvalProtocol] = EvalProtocol.ZERO_SHOT
    backbone: ClassVar[Literal["clip", "dinov2"]] = "clip"
    exported: ClassVar[bool] = True
    refused_targets: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        return f"<method {self.name}>"

    # --- options and records (torch-free) -------------------------------------------------

    def check_options(self, heads: bool, reference: bool, reference_option: str) -> None:
        """One-line ClipadErrors for options this method cannot use: ``heads`` (--heads given),
        ``reference`` (good images given), ``reference_option`` (how the command asks for them:
        "--reference GOOD_IMAGES" on export, "--shots K ..." on eval)."""
        if self.takes_heads and not heads:
            raise ClipadError(f"--method {self.name} needs --heads FILE")
        if heads and not self.takes_heads:
            raise ClipadError(f"--method {self.name} takes no --heads (the heads are SDP+'s)")
        if self.needs_reference and not reference:
            raise ClipadError(f"--method {self.name} needs {reference_option}")

    def check_exported(self, engine: bool = False, openvino: bool = False, triton_repo: bool = False) -> None:
        """A one-line ClipadError when `clipad export` cannot export this method yet, or not to
        the targets asked (``refused_targets``)."""
        if not self.exported:
            raise ClipadError(
                f"--method {self.name} is not exported yet (evaluate it: clipad eval --method {self.name} --shots K)"
            )
        asked = [f for f, on in (("--engine", engine), ("--openvino", openvino), ("--triton-repo", triton_repo)) if on]
        if refused := [f for f in asked if f in self.refused_targets]:
            raise ClipadError(
                f"{', '.join(refused)}: not built for --method {self.name} yet (ONNX Runtime and the torch "
                "backend serve every method)"
            )

    def manifest_error(self, heads: bool, reference: bool, text: bool = True, dino: bool = False) -> str | None:
        """Why a manifest of this method is inconsistent ("field: reason"), or None: ``heads``:
        the manifest has heads (sha256 and file), ``reference``: it has a reference memory,
        ``text``: its text vectors' records (rvs and prompts), ``dino``: an AnomalyDINO record."""
        if not self.exported:
            return f"mode: {self.name} artifacts are not made by this clipad (not exported yet)"
        if not text:
            return f"rvs: mode {self.name} needs the records of its text vectors (rvs and prompts)"
        if dino:
            return f"anomalydino: only for mode anomalydino, not {self.name}"
        if heads != self.takes_heads:
            return (
                f"heads_sha256: mode {self.name} {'needs' if self.takes_heads else 'takes no'} heads (sha256 and file)"
            )
        if self.needs_reference and not reference:
            return f"reference: mode {self.name} needs a reference memory"
        return None

    def label(self, shots: int | None) -> str:
        """What `clipad eval` says it evaluates: the name, with --shots K the reference added."""
        if shots is None:
            return self.name
        return f"{self.name}, K={shots}" if not self.text_path else f"{self.name} + reference, K={shots}"

    def shots_label(self) -> str:
        """The ``shots.mode`` entry of results.json under --shots."""
        return self.name if not self.text_path else f"{self.name} + reference"

    def draw(self, good: list[Path], shots: int, seed: int) -> list[Path]:
        """The ``shots`` good training images of one shot seed (`clipad eval --shots`): numpy's
        default_rng(seed) choice without replacement from the sorted list; one line when too few."""
        import numpy as np

        if shots > len(good):
            raise ClipadError(f"--shots {shots} is more than the {len(good)} good training images in {good[0].parent}")
        idx = np.random.default_rng(seed).choice(len(good), size=shots, replace=False)
        return [good[i] for i in sorted(idx)]

    def default_sigma(self, dataset: str) -> float:
        """The map's Gaussian sigma when none is given (method.md 7.2, 10 item 8): 8."""
        from clipad.model.sdp import DEFAULT_SIGMA

        return DEFAULT_SIGMA

    # --- the model (torch, imported when called) ------------------------------------------

    def load(self, spec: WeightSpec, device: str | torch.device = "cpu") -> LoadedModel:
        """The backbone with its weights (open_clip's CLIP for the CLIP-AD methods)."""
        from clipad.model.loading import load_model

        return load_model(spec, device)

    def build(self, loaded: LoadedModel, text: torch.Tensor, sigma: float, heads: Heads | None = None) -> SDPModel:
        """The zero-shot model of one category: text float32 [D, 2] (column 0 normal, 1 abnormal),
        ``heads`` exactly when ``takes_heads``. A baked reference memory (export --reference,
        eval --shots) wraps it afterwards, text path dropped when ``text_path`` is false."""
        from clipad.model.sdp import SDPModel

        if (heads is not None) != self.takes_heads:
            raise ValueError(f"method {self.name}: heads {'needed' if self.takes_heads else 'not used'}")
        visual: Any = loaded.clip.visual  # open_clip's VisionTransformer (no type stubs)
        return SDPModel(visual, text, loaded.image_size, sigma, heads, loaded.mean, loaded.std)

    def graph_flops(self, reference: Any, image_size: int) -> GraphFlops:
        """The FLOPs of an export of this method, from its PyTorch reference (``clipad.deploy.rebuild``:
        an SDPModel, or a ReferenceModel around one) at ``image_size`` px: ``flops`` of the CLIP ViT's
        dimensions and the baked reference memory's M per stage."""
        from clipad.model.flops import ViTDims, plain_encoding_flops

        dims = ViTDims.from_visual(reference.vit.visual, image_size)
        memory = getattr(getattr(reference, "reference", None), "memory", None)  # a ReferenceModel's [S, M, W]
        per_image = self.flops(dims, 0 if memory is None else int(memory.shape[1]))
        return GraphFlops(per_image, dims, plain_encoding_flops(dims))

    @abstractmethod
    def flops(self, dims: ViTDims, memory_patches: int = 0) -> dict[str, int]:
        """FLOPs of one image through the exported graph, by part, and their ``total``
        (``clipad.model.flops``); ``memory_patches``: M per stage of a baked reference memory (0: none)."""
