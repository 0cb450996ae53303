"""Normal-reference ("few-shot") maps: a memory of good parts' patch tokens, baked into the model.

method.md section 14. The facts follow APRIL-GAN's few-shot mode (the CLIP-AD authors' earlier
system); the code is ours:

- memory: per stage j, the raw residual taps' patch tokens (``Taps.ori[:, j, 1:]``, the same
  tokens SDP+'s heads read) of K good images, L2-normalised; above ``max_patches`` per stage a
  greedy k-center coreset (PatchCore's selection) keeps the memory bounded, and the coverage
  radius it leaves (the largest cosine distance of a dropped patch to its nearest kept one) is
  recorded;
- distance of a test patch at stage j: D_j = 1 - max_m cos(z, memory_j[m]) (one MatMul, one
  ReduceMax);
- reference map: R = G (A_ac (sum_j D_j) A_ac^T) G^T, i.e. the stage distances summed (the
  official formula sums; a mean is the sum / 4 and ranks pixels identically), upsampled
  bilinearly with align_corners true (as the official few-shot code) and blurred with the same
  Gaussian as the zero-shot map, as one constant product (``blur_up``);
- fused mode: anomaly_map = M_zero_shot + R (the blur is linear, so blurring the sum equals
  adding the blurred maps); image_prob = 0.5 (p_zero_shot + s(max R_fused));
  reference mode: anomaly_map = R, image_prob = s(max R);
- s(m) = sigmoid((m - center) / scale): the map maximum normalised with constants fixed at
  export from the reference images' own leave-one-out maxima (``score_constants``), in place of
  the official test-set min-max that a camera never has. `clipad calibrate` then fixes its
  ranges on top, as for every export.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipad.model.maps import apply_separable, as_tensor, bilinear_matrix, gaussian_matrix
from clipad.model.preprocess import normalize
from clipad.model.sdp import SDPModel

DEFAULT_MEMORY_PATCHES = 1024  # per stage; ViT-B-16-plus-240 has 225 patches per image, so K <= 4 keeps every patch
STAGE_COMBINE = "sum"
MIN_SCALE = 1e-3  # floor of the score scale, relative to max(|center|, 1)


@dataclass(frozen=True)
class Memory:
    """The reference memory of all stages.

    tokens: float32 [S, M, W], unit rows (S stages, M patches per stage, W the ViT width);
    radius: per stage, the coverage radius in cosine distance (0 when nothing was dropped);
    source_patches: patches per stage the memory was selected from.
    """

    tokens: torch.Tensor
    radius: list[float]
    source_patches: int

    @property
    def nbytes(self) -> int:
        return self.tokens.numel() * self.tokens.element_size()


@dataclass(frozen=True)
class ScoreConstants:
    """s(m) = sigmoid((m - center) / scale); ``maxima``: the leave-one-out map maxima they come
    from; ``method``: how they were fixed."""

    center: float
    scale: float
    maxima: list[float]
    method: str


def k_center(x: torch.Tensor, n: int) -> tuple[torch.Tensor, float]:
    """Greedy k-center selection (PatchCore's coreset) on unit rows x float32 [N, W].

    Returns (indices int64 [min(n, N)], coverage radius as a cosine distance). Starts at row 0
    (PatchCore starts at a random row; row 0 keeps exports reproducible); each step adds the row
    farthest from the selection. On unit vectors 1 - cos is monotone in the Euclidean distance,
    so this is the Euclidean k-center greedy.
    """
    if x.shape[0] <= n:
        return torch.arange(x.shape[0]), 0.0
    chosen = torch.empty(n, dtype=torch.int64)
    nearest = torch.full((x.shape[0],), float("inf"), dtype=x.dtype)
    idx = 0
    for i in range(n):
        chosen[i] = idx
        nearest = torch.minimum(nearest, 1.0 - x @ x[idx])
        idx = int(torch.argmax(nearest))
    return chosen, float(nearest.max().clamp(min=0))


def build_memory(tokens: torch.Tensor, max_patches: int) -> Memory:
    """Patch tokens float32 [S, N, W] (any norm) -> Memory bounded by ``max_patches`` per stage."""
    if max_patches < 1:
        raise ValueError("max_patches must be >= 1")
    z = F.normalize(tokens.to(torch.float32), dim=-1)
    kept, radius = [], []
    for stage in z:
        idx, r = k_center(stage, max_patches)
        kept.append(stage[idx])
        radius.append(r)
    return Memory(torch.stack(kept).contiguous(), radius, int(tokens.shape[1]))


def stage_patches(tokens: torch.Tensor) -> torch.Tensor:
    """Per-image patch tokens [K, S, P, W] -> per-stage pools [S, K * P, W]."""
    k, s, p, w = tokens.shape
    return tokens.permute(1, 0, 2, 3).reshape(s, k * p, w)


class ReferenceMaps(nn.Module):
    """The reference map from patch tokens.

    ``forward(patches)``: float32 [B, S, P, W] (raw taps' patch tokens, P = g * g) -> float32
    [B, H, W]. ``memory`` (float32 [S, M, W], unit rows) and ``blur_up`` (float32 [H, g] =
    G_sigma A_ac) are buffers: constants of the exported graph.
    """

    memory: torch.Tensor  # buffers (register_buffer)
    blur_up: torch.Tensor

    def __init__(self, grid: int, image_size: int, sigma: float, memory: torch.Tensor):
        super().__init__()
        self.grid = grid
        self.register_buffer("memory", memory.detach().to(torch.float32).clone())
        up = bilinear_matrix(grid, image_size, align_corners=True)
        self.register_buffer("blur_up", as_tensor(gaussian_matrix(image_size, sigma) @ up), persistent=False)

    def distances(self, patches: torch.Tensor) -> torch.Tensor:
        """Per-stage distance 1 - max cosine to the memory: [B, S, P, W] -> [B, S, P]."""
        z = F.normalize(patches, dim=-1)
        sim = torch.matmul(z, self.memory.transpose(1, 2))  # [B, S, P, M]
        return 1.0 - sim.amax(dim=-1)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        d = self.distances(patches).sum(dim=1)  # STAGE_COMBINE; upsampling is linear, so summing first is exact
        return apply_separable(d.reshape(d.shape[0], self.grid, self.grid), self.blur_up)


def normalised_max(amap: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """s(max over pixels): amap float32 [B, H, W], score float32 [2] (center, scale) -> [B]."""
    m = amap.flatten(1).amax(dim=1)
    return torch.sigmoid((m - score[0]) / score[1])


class ReferenceModel(SDPModel):
    """An SDPModel with a baked reference memory: the same contract (uint8 [B, H, W, 3] ->
    anomaly_map float32 [B, H, W], image_prob float32 [B]), so export, parity and every backend
    treat it as any other export.

    Shares ``base``'s ViT and zero-shot maps (module names stay ``vit``/``maps``, so the FP16
    placement keeps everything outside the ViT, this memory product included, in FP32).
    ``reference_only``: the map is the reference map alone (mode "reference"; the text path is
    not computed and drops out of the traced graph).
    """

    score: torch.Tensor  # buffer (register_buffer): [center, scale]

    def __init__(self, base: SDPModel, memory: torch.Tensor, score: ScoreConstants, reference_only: bool):
        nn.Module.__init__(self)
        self.vit, self.maps = base.vit, base.maps
        self.image_size, self.sigma, self.mean, self.std = base.image_size, base.sigma, base.mean, base.std
        self.reference_only = reference_only
        device = base.text.device
        self.reference = ReferenceMaps(self.vit.grid, self.image_size, self.sigma, memory).to(device)
        self.register_buffer("score", torch.tensor([score.center, score.scale], dtype=torch.float32, device=device))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_only:
            amap = self.reference(patch_tokens(self, images))
            return amap, normalised_max(amap, self.score)
        taps = self.taps(images)
        zmap, zprob = self.maps_from_taps(taps)
        amap = zmap + self.reference(taps.ori[:, :, 1:])
        return amap, 0.5 * (zprob + normalised_max(amap, self.score))


def patch_tokens(model: SDPModel, images: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B, H, W, 3] -> the raw taps' patch tokens float32 [B, S, P, W] (no projection)."""
    return model.vit(normalize(images, model.mean, model.std), project=False).ori[:, :, 1:]


@torch.no_grad()
def encode(model: SDPModel, images: np.ndarray, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [K, H, W, 3] -> (raw taps' patch tokens float32 [K, S, P, W], zero-shot maps float32
    [K, H, W]), on the CPU; reference mode ignores the maps."""
    device = model.text.device
    toks, maps = [], []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])).to(device)
        taps = model.taps(x)
        toks.append(taps.ori[:, :, 1:].cpu())
        maps.append(model.maps_from_taps(taps)[0].cpu())
    return torch.cat(toks), torch.cat(maps)


@torch.no_grad()
def held_out_maxima(
    model: SDPModel, tokens: torch.Tensor, zero_shot: torch.Tensor | None, prior: torch.Tensor | None, max_patches: int
) -> list[float]:
    """Leave-one-out map maxima of the reference images: image i scored against the memory built
    (with the same bound) from the other images and ``prior`` (an earlier memory, [S, M, W]).

    tokens: [K, S, P, W]; zero_shot: [K, H, W] (fused mode) or None. Empty when there is no
    other image to build a memory from.
    """
    out = []
    for i in range(len(tokens)):
        others = stage_patches(torch.cat([tokens[:i], tokens[i + 1 :]]))
        if prior is not None:
            others = torch.cat([prior, others], dim=1)
        if others.shape[1] == 0:
            return []
        maps = ReferenceMaps(model.vit.grid, model.image_size, model.sigma, build_memory(others, max_patches).tokens)
        amap = maps(tokens[i : i + 1])[0]
        if zero_shot is not None:
            amap = amap + zero_shot[i]
        out.append(float(amap.max()))
    return out


def score_constants(maxima: list[float]) -> ScoreConstants:
    """center = the largest good maximum seen (a good part at export scores s <= 0.5), scale =
    their standard deviation, floored at MIN_SCALE * max(|center|, 1). Without held-out maxima
    (K = 1) center 0 and scale 1: monotone but uncalibrated; run `clipad calibrate`."""
    if not maxima:
        return ScoreConstants(
            0.0, 1.0, [], "none: one reference image, no held-out maximum (calibrate before thresholding)"
        )
    center = max(maxima)
    scale = max(float(np.std(maxima)), MIN_SCALE * max(abs(center), 1.0))
    return ScoreConstants(
        float(center),
        float(scale),
        [float(m) for m in maxima],
        "leave-one-out: center = max, scale = std of the reference images' held-out map maxima",
    )


@dataclass(frozen=True)
class Baked:
    """What baking produced: the model, its memory and its score constants."""

    model: ReferenceModel
    memory: Memory
    score: ScoreConstants


@torch.no_grad()
def bake(
    base: SDPModel,
    images: np.ndarray,
    max_patches: int = DEFAULT_MEMORY_PATCHES,
    reference_only: bool = False,
    prior: Memory | None = None,
    prior_maxima: list[float] | None = None,
) -> Baked:
    """Build the memory from good images uint8 [K, H, W, 3] (model resolution, read through the
    one image path) and return the ReferenceModel around ``base``.

    ``prior``/``prior_maxima``: an existing memory and its leave-one-out maxima (`clipad reference
    add`): the new memory is the coreset of the prior memory and the new patches; its radius is
    bounded through the triangle inequality on chordal distances (sqrt(2 (1 - cos))).
    """
    tokens, zs = encode(base, images)
    zero_shot = None if reference_only else zs
    pool = stage_patches(tokens)
    prior_tokens = None if prior is None else prior.tokens.cpu()
    if prior_tokens is not None:
        pool = torch.cat([prior_tokens, pool], dim=1)
    memory = build_memory(pool, max_patches)
    if prior is not None:
        radius = [((2 * a) ** 0.5 + (2 * b) ** 0.5) ** 2 / 2 for a, b in zip(prior.radius, memory.radius, strict=False)]
        memory = Memory(memory.tokens, radius, prior.source_patches + tokens.shape[0] * tokens.shape[2])
    maxima = list(prior_maxima or []) + held_out_maxima(base, tokens, zero_shot, prior_tokens, max_patches)
    score = score_constants(maxima)
    model = ReferenceModel(base, memory.tokens, score, reference_only).eval()
    return Baked(model, memory, score)
