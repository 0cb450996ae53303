"""SDP and SDP+ anomaly maps and the image probability, from the dual-path taps.

method.md sections 5-7. With T = [t_normal, t_abnormal] (unit columns, [D, 2]):
- feature surgery per stage j, with Z the L2-normalised surgery tokens and p = softmax(Z_cls T)
  (no temperature, this stage's own cls): sim_j = p_1 (Z T_1) - p_0 (Z T_0). This is the exact
  closed form of the official broadcast code (w = p / mean(p), redundant feature = class mean).
- M_raw = up_half(sum_j sim_j) at image resolution; M_SDP = G_sigma(M_raw).
- SDP+: A_j = sigmoid(up_ac(100 (U_j T_1 - U_j T_0))), U_j the normalised head output on the raw
  taps' patch tokens; softmax over two upsampled logits equals this sigmoid because upsampling
  is linear. M_plus = G_sigma(M_raw + sum_j A_j).
- image_prob = softmax(100 Z_4,cls T)[1] (the hard-coded 100, not the model's logit_scale).

The paper differs (method.md section 10, items 5-9): the code's weights multiply the main term,
there is no temperature in feature surgery, the logits use 100 and are upsampled before the
softmax. We follow the code.

Every step exists once: ``head_logit_diff`` is also what SDP+ training differentiates, and
``AnomalyMaps`` (the map assembly from a surgery map and patch tokens) is also what training's
validation scores. The default smoothing per method and dataset is the method's
(``clipad.methods``: ``Method.default_sigma``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clipad.model.heads import Heads
from clipad.model.maps import apply_separable, as_tensor, bilinear_matrix, gaussian_matrix
from clipad.model.preprocess import OPENAI_MEAN, OPENAI_STD, normalize
from clipad.model.surgery import DualPathViT, Taps

LOGIT_SCALE = 100.0  # hard-coded in the official code (method.md 6, 7.2)
DEFAULT_SIGMA = 8.0  # the official smoothing (method.md 7.2, 10 items 6 and 8)
VISA_SDP_PLUS_SIGMA = 2.0  # SDP+ on VisA only (clipad.methods.sdp_plus)


def feature_surgery(surgery: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Summed per-stage feature-surgery similarity of the abnormal class.

    surgery: float32 [B, S, T, D]; text: float32 [D, 2] -> float32 [B, T - 1] (patch tokens).
    """
    z = F.normalize(surgery, dim=-1)
    cos = torch.matmul(z, text)  # [B, S, T, 2]
    p = torch.softmax(cos[:, :, :1, :], dim=-1)  # each stage's own cls, no temperature
    sim = p[..., 1:2] * cos[:, :, 1:, 1:2] - p[..., 0:1] * cos[:, :, 1:, 0:1]
    return sim.sum(dim=1)[..., 0]


def image_prob(surgery: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """softmax(100 * cos(CLIP image embedding, T))[abnormal]: float32 [B]."""
    z = F.normalize(surgery[:, -1, 0], dim=-1)
    return torch.softmax(LOGIT_SCALE * torch.matmul(z, text), dim=-1)[:, 1]


def head_logit_diff(
    patches: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, text: torch.Tensor
) -> torch.Tensor:
    """SDP+ per-stage logit difference L_j[1] - L_j[0] = 100 (U_j T_1 - U_j T_0) (method.md 7.2).

    patches: [B, S, P, W], the raw taps' patch tokens (cls removed: the heads never see it,
    section 7.1); weight: [S, D, W]; bias: [S, D]; text: [D, 2] shared by the batch, or
    [B, D, 2] per sample (training batches mix categories) -> [B, S, P]. Float32, or float16
    under autocast.
    """
    u = F.normalize(torch.einsum("bspw,sdw->bspd", patches, weight) + bias[None, :, None, :], dim=-1)
    cos = torch.matmul(u, text) if text.dim() == 2 else torch.einsum("bspd,bdk->bspk", u, text)
    logits = LOGIT_SCALE * cos
    return logits[..., 1] - logits[..., 0]


class AnomalyMaps(nn.Module):
    """The anomaly map of one category from a feature-surgery map and (SDP+) patch tokens.

    ``forward(sim, patches)``: sim float32 [B, g, g], the summed feature-surgery map of section 5
    on the patch grid; patches float32 [B, 4, P, W] (P = g * g), the raw taps' patch tokens, for
    SDP+ only -> anomaly_map float32 [B, H, W] (H = W = image_size).

    - SDP: G (A_hp sim A_hp^T) G^T, as one product with K = G A_hp (method.md 9).
    - SDP+: G (A_hp sim A_hp^T + sum_j sigmoid(A_ac D_j A_ac^T)) G^T, D_j the heads' logit
      difference (sections 7.2, 9): the logits are upsampled with align_corners true, the
      surgery map half-pixel, and one blur acts on the sum.

    The text T (float32 [D, 2]), the heads and the upsampling/blur matrices are buffers, so the
    module traces into constant MatMuls. ``text`` is kept in both modes: SDPModel reads its
    category's T from here.
    """

    # buffers (register_buffer); blur_up in SDP mode, up_half/blur/up_ac/head_* in SDP+ mode
    text: torch.Tensor
    blur_up: torch.Tensor
    up_half: torch.Tensor
    blur: torch.Tensor
    up_ac: torch.Tensor
    head_weight: torch.Tensor
    head_bias: torch.Tensor

    def __init__(self, grid: int, image_size: int, sigma: float, text: torch.Tensor, heads: Heads | None = None):
        super().__init__()
        self.grid, self.image_size, self.sigma = grid, image_size, float(sigma)
        self.has_heads = heads is not None  # SDP+ (method.md 7.2), else SDP
        self.register_buffer("text", text.detach().to(torch.float32).clone())
        up = bilinear_matrix(grid, image_size, align_corners=False)
        blur = gaussian_matrix(image_size, sigma)
        if heads is None:
            self.register_buffer("blur_up", as_tensor(blur @ up))
        else:
            self.register_buffer("up_half", as_tensor(up))
            self.register_buffer("blur", as_tensor(blur))
            self.register_buffer("up_ac", as_tensor(bilinear_matrix(grid, image_size, align_corners=True)))
            self.register_buffer("head_weight", heads.weight.detach().to(torch.float32).clone())
            self.register_buffer("head_bias", heads.bias.detach().to(torch.float32).clone())

    def forward(self, sim: torch.Tensor, patches: torch.Tensor | None = None) -> torch.Tensor:
        if (patches is not None) != self.has_heads:
            raise ValueError("patch tokens go with the heads: SDP+ maps need them, SDP maps take none")
        if patches is None:
            return apply_separable(sim, self.blur_up)
        diff = head_logit_diff(patches, self.head_weight, self.head_bias, self.text)
        ft = torch.sigmoid(apply_separable(diff.reshape(sim.shape[0], -1, self.grid, self.grid), self.up_ac)).sum(dim=1)
        return apply_separable(apply_separable(sim, self.up_half) + ft, self.blur)


class SDPModel(nn.Module):
    """CLIP-AD inference for one category: uint8 images in, anomaly map and image probability out.

    ``forward(images)``: uint8 RGB [B, H, W, 3] at model resolution ->
    (anomaly_map float32 [B, H, W], image_prob float32 [B]). The text vectors, the heads and the
    upsampling/blur matrices are constants of the module (held by its ``maps``, an AnomalyMaps),
    so the same module is the PyTorch reference and the graph that gets exported.
    """

    def __init__(
        self,
        visual: nn.Module,
        text: torch.Tensor,
        image_size: int,
        sigma: float = DEFAULT_SIGMA,
        heads: Heads | None = None,
        mean: tuple[float, ...] = OPENAI_MEAN,
        std: tuple[float, ...] = OPENAI_STD,
    ):
        super().__init__()
        self.vit = DualPathViT(visual)
        self.image_size = image_size
        self.sigma = float(sigma)
        self.mean, self.std = tuple(mean), tuple(std)
        # Outside the ViT submodule on purpose: the FP16 export keeps every node outside "/vit/" in FP32.
        self.maps = AnomalyMaps(self.vit.grid, image_size, sigma, text, heads).to(self.vit.visual.proj.device)

    @property
    def text(self) -> torch.Tensor:
        """The category's text vectors T, float32 [D, 2] (column 0 normal, 1 abnormal)."""
        return self.maps.text

    def taps(self, images: torch.Tensor) -> Taps:
        """uint8 RGB [B, H, W, 3] -> Taps (normalisation happens here, inside the model).

        The stage projection is called outside the ViT module so that the FP16 export, which
        keeps everything outside the ViT in FP32, keeps it too: the maps are differences of
        cosines and FP16 rounding of the projected tokens shows in them.
        """
        raw = self.vit(normalize(images, self.mean, self.std), project=False)
        return Taps(surgery=self.vit.project(raw.surgery), ori=raw.ori)

    def maps_from_taps(self, taps: Taps) -> tuple[torch.Tensor, torch.Tensor]:
        """Taps -> (anomaly_map float32 [B, H, W], image_prob float32 [B])."""
        b, g = taps.surgery.shape[0], self.vit.grid
        sim = feature_surgery(taps.surgery, self.text).reshape(b, g, g)
        patches = taps.ori[:, :, 1:] if self.maps.has_heads else None  # the heads' input (method.md 7.1)
        return self.maps(sim, patches), image_prob(taps.surgery, self.text)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.maps_from_taps(self.taps(images))

    def forward_fp16(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The official GPU precision for the ViT (fp16 autocast, CUDA only), with the map
        post-processing kept in float32 (the official blur runs in scipy, in float64)."""
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            taps = self.taps(images)
        return self.maps_from_taps(Taps(taps.surgery.float(), taps.ori.float()))
