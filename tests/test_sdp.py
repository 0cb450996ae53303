"""SDP / SDP+ maps and the image probability against independent float64 computations.

The references here use the official *form* of each step (method.md sections 5-7): the
feature-surgery broadcast with w = p / mean(p) and the redundant feature, F.interpolate on
both logit channels followed by a two-way softmax, scipy's gaussian_filter per image.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from clipad.core.errors import ClipadError
from clipad.methods.registry import get_method
from clipad.model.heads import Heads, load_heads, save_heads
from clipad.model.sdp import SDPModel, feature_surgery, head_logit_diff, image_prob
from tests.helpers import random_heads, random_text


def official_feature_surgery(tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The broadcast form, float64: tokens [B, T, D], text [D, 2] -> sim [B, T, 2]."""
    z = tokens.double() / tokens.double().norm(dim=-1, keepdim=True)
    t = text.double()
    p = torch.softmax(z[:, 0] @ t, dim=-1)  # [B, 2], no temperature
    w = p / p.mean(dim=-1, keepdim=True)
    feats = z[:, :, None, :] * t.T[None, None, :, :]  # [B, T, 2, D]
    feats = feats * w[:, None, :, None]
    redundant = feats.mean(dim=2, keepdim=True)
    return (feats - redundant).sum(-1)


def test_feature_surgery_closed_form():
    g = torch.Generator().manual_seed(0)
    surgery = torch.randn(3, 4, 10, 16, generator=g)
    text = random_text(16)
    ref = sum(official_feature_surgery(surgery[:, j], text)[:, 1:, 1] for j in range(4))
    torch.testing.assert_close(feature_surgery(surgery, text).double(), ref, rtol=1e-5, atol=1e-6)
    # the abnormal channel is minus the normal one in the official form
    full = official_feature_surgery(surgery[:, 0], text)
    torch.testing.assert_close(full[..., 0], -full[..., 1])


def test_image_prob_uses_factor_100_on_final_cls():
    g = torch.Generator().manual_seed(1)
    surgery = torch.randn(2, 4, 5, 8, generator=g)
    text = random_text(8, 1)
    z = surgery[:, 3, 0].double()
    z = z / z.norm(dim=-1, keepdim=True)
    logits = 100 * (z @ text.double())
    ref = torch.exp(logits[:, 1]) / torch.exp(logits).sum(-1)
    torch.testing.assert_close(image_prob(surgery, text).double(), ref, rtol=1e-5, atol=1e-7)


def test_head_logit_diff_takes_shared_or_per_sample_text():
    """Training batches mix categories, so the text comes per sample there; the reference has one
    category's text for the whole batch. Both forms give the same logits for the same text."""
    g = torch.Generator().manual_seed(2)
    patches = torch.randn(3, 4, 9, 12, generator=g)
    heads = random_heads(12, 6)
    texts = torch.stack([random_text(6, seed) for seed in range(3)])
    per_sample = head_logit_diff(patches, heads.weight, heads.bias, texts)
    assert per_sample.shape == (3, 4, 9)
    for b in range(3):
        shared = head_logit_diff(patches[b : b + 1], heads.weight, heads.bias, texts[b])
        torch.testing.assert_close(per_sample[b : b + 1], shared)


def test_default_sigma_is_2_only_for_sdp_plus_on_visa():
    sdp, plus, reference = (get_method(m) for m in ("sdp", "sdp+", "reference"))
    assert plus.default_sigma("visa") == 2.0
    assert sdp.default_sigma("visa") == plus.default_sigma("mvtec") == sdp.default_sigma("mvtec") == 8.0
    assert reference.default_sigma("visa") == 8.0


def reference_maps(model: SDPModel, taps, heads: Heads | None) -> tuple[np.ndarray, np.ndarray]:
    """Independent pipeline from the taps: interpolate, softmax, scipy blur, all float64."""
    text = model.text.double()
    g, n, b = model.vit.grid, model.image_size, taps.surgery.shape[0]
    sim = sum(official_feature_surgery(taps.surgery[:, j], text)[:, 1:] for j in range(4))  # [B, P, 2]
    sim = sim.reshape(b, g, g, 2).permute(0, 3, 1, 2)
    raw = F.interpolate(sim, size=(n, n), mode="bilinear", align_corners=False)[:, 1]
    if heads is not None:
        for j in range(4):
            u = taps.ori[:, j, 1:].double() @ heads.weight[j].double().T + heads.bias[j].double()
            u = u / u.norm(dim=-1, keepdim=True)
            logits = (100 * u @ text).reshape(b, g, g, 2).permute(0, 3, 1, 2)
            up = F.interpolate(logits, size=(n, n), mode="bilinear", align_corners=True)
            raw = raw + torch.softmax(up, dim=1)[:, 1]
    maps = np.stack([gaussian_filter(m, sigma=model.sigma, mode="reflect", truncate=4.0) for m in raw.numpy()])
    z = taps.surgery[:, 3, 0].double()
    prob = torch.softmax(100 * (z / z.norm(dim=-1, keepdim=True)) @ text, dim=-1)[:, 1]
    return maps, prob.numpy()


@pytest.mark.parametrize("mode,sigma", [("sdp", 8.0), ("sdp+", 8.0), ("sdp+", 2.0), ("sdp", 0.0)])
def test_model_matches_reference_pipeline(tiny, uint8_images, mode, sigma):
    visual = tiny.clip.visual
    heads = random_heads(visual.conv1.out_channels, visual.proj.shape[1]) if mode == "sdp+" else None
    model = SDPModel(visual, random_text(visual.proj.shape[1]), tiny.image_size, sigma, heads)
    x = uint8_images(3, tiny.image_size, seed=7)
    with torch.no_grad():
        amap, prob = model(x)
        taps = model.taps(x)
    ref_map, ref_prob = reference_maps(model, taps, heads)
    assert amap.shape == (3, tiny.image_size, tiny.image_size) and amap.dtype == torch.float32
    assert prob.shape == (3,)
    scale = np.abs(ref_map).max()
    np.testing.assert_allclose(amap.numpy(), ref_map, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(prob.numpy(), ref_prob, rtol=1e-4, atol=1e-6)


def test_sdp_plus_differs_from_sdp(tiny, uint8_images):
    visual = tiny.clip.visual
    text = random_text(visual.proj.shape[1])
    heads = random_heads(visual.conv1.out_channels, visual.proj.shape[1])
    x = uint8_images(1, tiny.image_size)
    with torch.no_grad():
        a, p = SDPModel(visual, text, tiny.image_size)(x)
        b, q = SDPModel(visual, text, tiny.image_size, heads=heads)(x)
    torch.testing.assert_close(p, q)  # the image probability does not involve the heads
    assert (a - b).abs().max() > 0.1  # M_ft ranges over [0, 4]


def test_heads_roundtrip_safetensors_and_official_layout(tmp_path):
    heads = random_heads(12, 6)
    heads.metadata = {"model": "x"}
    save_heads(tmp_path / "h.safetensors", heads)
    loaded = load_heads(tmp_path / "h.safetensors", 12, 6)
    torch.testing.assert_close(loaded.weight, heads.weight)
    torch.testing.assert_close(loaded.bias, heads.bias)
    assert loaded.metadata == {"model": "x"}
    torch.save({"linear_layers": heads.state_dict()}, tmp_path / "train_on_visa.pth")
    official = load_heads(tmp_path / "train_on_visa.pth", 12, 6)
    torch.testing.assert_close(official.weight, heads.weight)


def test_heads_wrong_shape_or_keys_fail_in_one_line(tmp_path):
    save_heads(tmp_path / "h.safetensors", random_heads(12, 6))
    with pytest.raises(ClipadError, match=r"'fc.0.weight' is \[6, 12\], this model needs \[6, 16\]"):
        load_heads(tmp_path / "h.safetensors", 16, 6)
    torch.save({"linear_layers": {"fc.0.weight": torch.zeros(6, 12)}}, tmp_path / "partial.pth")
    with pytest.raises(ClipadError, match="no 'fc.0.bias'"):
        load_heads(tmp_path / "partial.pth", 12, 6)
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ClipadError, match="cannot read heads file"):
        load_heads(tmp_path / "junk.safetensors", 12, 6)
