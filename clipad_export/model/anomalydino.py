"""AnomalyDINO as one module: DINOv2 patch features, a baked nearest-neighbour memory of good
images, the foreground mask and the top-1% score, all inside the graph (method.md section 15).

``AnomalyDinoModel`` keeps the graph contract of every method: uint8 RGB [B, H, W, 3] at the
export's fixed size in, (anomaly_map float32 [B, H, W], image_prob float32 [B]) out, where
image_prob is the official image score (the mean of the top 1% patch distances, a cosine
distance, not a probability). ``bake`` builds it from good images.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clipad.model.dinov2 import IMAGENET_MEAN, IMAGENET_STD, DinoFeatures
from clipad.model.maps import apply_separable, as_tensor, bilinear_matrix, gaussian_matrix
from clipad.model.preprocess import normalize
from clipad.model.reference import k_center

SIGMA = 4.0  # the official map blur, in pixels of the map's size
MASK_THRESHOLD = 10.0  # first principal component > 10: foreground
CENTRE_BORDER = 0.2  # the centre crop [0.2, 0.8) of the grid decides the mask's orientation
CENTRE_MIN_FRACTION = 0.35  # at most this fraction kept in the centre: the component's sign is flipped
SQUARINGS = 6  # Gram-matrix squarings of the power iteration: the component from C^64
POLISH = 2  # plain power steps C v after the squarings (float32 accuracy)
ROTATIONS = (0, 45, 90, 135, 180, 225, 270, 315)  # degrees, the official "agnostic" augmentation


def top_k(n_patches: int) -> int:
    """How many of the largest patch distances the image score averages: int(0.01 n), and the
    maximum (1) when that is 0 (the official ``mean_top1p``)."""
    return max(int(n_patches * 0.01), 1)


def rotate(image: np.ndarray, angle: float) -> np.ndarray:
    """uint8 [H, W, 3] rotated by ``angle`` degrees about (W / 2, H / 2), same size, bilinear,
    mirrored border without repeating the edge (OpenCV's BORDER_REFLECT_101): the official
    reference augmentation."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    return cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def first_component(f: torch.Tensor, eye: torch.Tensor | None = None) -> torch.Tensor:
    """Projection of each patch on the first principal component: f float32 [B, N, W] -> [B, N].
    ``eye``: the identity float32 [W, W] (the model's constant; None: made here).

    The component v of the centred features c comes from the Gram matrix C = c^T c / trace [W, W]:
    SQUARINGS squarings (each divided by its trace, so every entry stays within [-1, 1]), the
    column of the largest diagonal entry, then POLISH steps v <- C v / |C v|. Sign rule (that of
    scikit-learn >= 1.5, ``svd_flip(u_based_decision=False)``): the entry of v with the largest
    magnitude is positive.
    """
    c = f - f.mean(dim=1, keepdim=True)
    # diagonals as products with a constant identity: torch.diagonal exports as If branches, and
    # an identity made from c's shape exports as EyeLike of a computed shape, which TensorRT's
    # parser refuses ("Eyelike does not work for dynamically shaped tensors": the model passes
    # its identity as a constant)
    if eye is None:
        eye = torch.eye(c.shape[-1], dtype=c.dtype, device=c.device)
    # divided by the trace from the start: every entry stays within [-1, 1] (FP16-safe range)
    s = c / (c * c).sum(dim=(1, 2), keepdim=True).sqrt()
    g = torch.matmul(s.transpose(1, 2), s)  # [B, W, W], trace 1
    m = g
    for _ in range(SQUARINGS):
        m = torch.matmul(m, m)
        m = m / (m * eye).sum(dim=(1, 2), keepdim=True)
    j = (m * eye).sum(dim=2).argmax(dim=1)  # [B]
    v = torch.gather(m, 2, j.view(-1, 1, 1).expand(-1, m.shape[1], 1))  # [B, W, 1]
    v = F.normalize(v, dim=1)
    for _ in range(POLISH):
        v = F.normalize(torch.matmul(g, v), dim=1)
    big = v.abs().argmax(dim=1, keepdim=True)  # [B, 1, 1]
    v = v * torch.sign(torch.gather(v, 1, big))
    return torch.matmul(c, v)[:, :, 0]  # indexing, not squeeze: squeeze exports as If branches


def grow(mask: torch.Tensor) -> torch.Tensor:
    """Dilation by 3 along the flattened patch order: float {0, 1} [B, N] -> [B, N]. The official
    code applies OpenCV's 3 x 3 kernel to an N x 1 column, so the neighbours are the previous and
    the next patch in row-major order (across row ends); the border adds nothing."""
    return F.max_pool1d(mask.unsqueeze(1), 3, stride=1, padding=1)[:, 0]


def foreground(f: torch.Tensor, grid: tuple[int, int], eye: torch.Tensor | None = None) -> torch.Tensor:
    """The official foreground mask from patch features f float32 [B, N, W]: float {0, 1} [B, N]
    (``eye``: as ``first_component``'s).

    pc > 10; when the centre crop keeps at most 35% of its patches, -pc > 10 instead; then a
    dilation and a closing (dilation, erosion), each by 3 along the patch order (``grow``).
    """
    pc = first_component(f, eye)
    gh, gw = grid
    r0, r1 = int(gh * CENTRE_BORDER), int(gh * (1 - CENTRE_BORDER))
    c0, c1 = int(gw * CENTRE_BORDER), int(gw * (1 - CENTRE_BORDER))
    pos = (pc > MASK_THRESHOLD).to(torch.float32)
    centre = pos.reshape(-1, gh, gw)[:, r0:r1, c0:c1].sum(dim=(1, 2))
    flip = (centre <= (r1 - r0) * (c1 - c0) * CENTRE_MIN_FRACTION).unsqueeze(1)
    mask = torch.where(flip, (-pc > MASK_THRESHOLD).to(torch.float32), pos)
    mask = grow(grow(mask))
    return 1.0 - grow(1.0 - mask)  # the closing's erosion


class AnomalyDinoModel(nn.Module):
    """uint8 RGB [B, H, W, 3] -> (anomaly_map float32 [B, H, W], image_prob float32 [B]).

    Patch distance 1 - max cosine to ``memory`` (float32 [M, W], unit rows; a constant of the
    graph), 0 on background patches when ``masking``; the map is the patch grid resized
    bilinearly (half-pixel) to H x W and blurred with sigma 4 (``rows`` [H, gh], ``cols``
    [W, gw]: the two as one constant product each); image_prob the mean of the ``k`` largest
    patch distances. With ``masking``, ``eye`` is the mask's identity [W, W], a constant too.
    """

    memory: torch.Tensor  # buffers
    rows: torch.Tensor
    cols: torch.Tensor
    eye: torch.Tensor | None

    def __init__(self, features: DinoFeatures, memory: torch.Tensor, masking: bool):
        super().__init__()
        self.vit = features  # named as SDPModel's ViT: the FP16 placement (deploy/fp16.py) keeps all else FP32
        self.masking = masking
        self.size = features.size
        self.grid = features.grid
        self.k = top_k(self.grid[0] * self.grid[1])
        self.register_buffer("memory", memory.detach().to(torch.float32).contiguous())
        (h, w), (gh, gw) = self.size, self.grid
        rows = gaussian_matrix(h, SIGMA) @ bilinear_matrix(gh, h, align_corners=False)
        cols = gaussian_matrix(w, SIGMA) @ bilinear_matrix(gw, w, align_corners=False)
        self.register_buffer("rows", as_tensor(rows), persistent=False)
        self.register_buffer("cols", as_tensor(cols), persistent=False)
        eye = torch.eye(self.memory.shape[1], dtype=torch.float32) if masking else None
        self.register_buffer("eye", eye, persistent=False)

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, H, W, 3] -> the normalised last-layer patch tokens float32 [B, N, W]."""
        return self.vit(normalize(images, IMAGENET_MEAN, IMAGENET_STD))

    def patch_distances(self, f: torch.Tensor) -> torch.Tensor:
        """Patch features [B, N, W] -> distances float32 [B, N] (masked patches 0)."""
        z = F.normalize(f, dim=-1)
        d = 1.0 - torch.matmul(z, self.memory.t()).amax(dim=-1)
        if self.masking:
            d = d * foreground(f, self.grid, self.eye)
        return d

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.patch_distances(self.patch_features(images))
        score = torch.topk(d, self.k, dim=1).values.mean(dim=1)
        amap = apply_separable(d.reshape(-1, *self.grid), self.rows, self.cols)
        return amap, score


@dataclass(frozen=True)
class DinoMemory:
    """The memory: ``tokens`` float32 [M, W] (unit rows); ``source_patches``: patches it was
    selected from; ``radius``: the coreset's coverage radius, cosine distance (0: all kept)."""

    tokens: torch.Tensor
    source_patches: int
    radius: float


@torch.no_grad()
def build_memory(
    features: DinoFeatures, images: np.ndarray, rotations: bool, max_patches: int | None = None, batch: int = 8
) -> DinoMemory:
    """Good images uint8 [K, H, W, 3] at the model's size -> their patch features, L2-normalised,
    each image also rotated by 45, ..., 315 degrees when ``rotations``. Reference images are not
    masked (the official default). ``max_patches``: greedy k-center coreset bound (None: all)."""
    views = [rotate(im, a) for im in images for a in ROTATIONS] if rotations else list(images)
    x = torch.from_numpy(np.ascontiguousarray(np.stack(views)))
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    device = features.pos.device
    chunks = [features(normalize(x[i : i + batch].to(device), mean, std)).cpu() for i in range(0, len(x), batch)]
    z = F.normalize(torch.cat(chunks).reshape(-1, chunks[0].shape[-1]), dim=-1)
    if max_patches is None or z.shape[0] <= max_patches:
        return DinoMemory(z.contiguous(), z.shape[0], 0.0)
    idx, radius = k_center(z, max_patches)
    return DinoMemory(z[idx].contiguous(), z.shape[0], radius)
