"""The staged dual-path forward against an independent float64 emulation of the official code.

The emulation follows method.md section 4 literally: per-head Python loops, a list-carried
surgery path that is reassigned at stage starts and accumulated in place otherwise, and the
original residual updated *in place* by the attention output, so that the taps of stages 1-3
become X_mid of the next block through aliasing, as in the official code. Our implementation
taps X_mid explicitly; the two must agree.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipad.model.loading import randomize_parameters
from clipad.model.preprocess import normalize
from clipad.model.surgery import DualPathViT


def _ln(x, mod):
    return F.layer_norm(x, mod.normalized_shape, mod.weight.double(), mod.bias.double(), mod.eps)


def official_emulation(visual, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """float64 emulation; x: normalised [B, 3, H, W]. Returns (surgery list, ori list) per stage."""
    x = x.double()
    w_conv = visual.conv1.weight.double()
    tok = F.conv2d(x, w_conv, stride=visual.conv1.stride)
    b, width = tok.shape[0], tok.shape[1]
    tok = tok.reshape(b, width, -1).permute(0, 2, 1)
    cls = visual.class_embedding.double().reshape(1, 1, width).repeat(b, 1, 1)
    x_ori = torch.cat([cls, tok], 1) + visual.positional_embedding.double()
    x_ori = _ln(x_ori, visual.ln_pre)
    blocks = visual.transformer.resblocks
    n_layers = len(blocks)
    stage = n_layers // 4
    features = [stage * (j + 1) for j in range(4)]  # 1-based, like "3 6 9 12"
    x_new = None
    stored = []
    for count, blk in enumerate(blocks):
        heads = blk.attn.num_heads
        hd = width // heads
        h = _ln(x_ori, blk.ln_1)
        qkv = h @ blk.attn.in_proj_weight.double().T + blk.attn.in_proj_bias.double()
        q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]
        outs, vvs = [], []
        for i in range(heads):
            sl = slice(i * hd, (i + 1) * hd)
            a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd), dim=-1)
            outs.append(a @ v[..., sl])
            avv = torch.softmax(v[..., sl] @ v[..., sl].transpose(1, 2) / math.sqrt(hd), dim=-1)
            vvs.append(avv @ v[..., sl])
        wo, bo = blk.attn.out_proj.weight.double(), blk.attn.out_proj.bias.double()
        o = torch.cat(outs, -1) @ wo.T + bo
        vv = torch.cat(vvs, -1) @ wo.T + bo
        if count == 0 or count % stage == 0:
            x_new = vv  # reset: the path restarts with this block's V-V output
        else:
            x_new += vv  # in place, as the official code
        if count == 0:
            x_ori = x_ori + o
        else:
            x_ori += o  # in place: mutates the tensor stored at the previous stage end
        m = _ln(x_ori, blk.ln_2) @ blk.mlp.c_fc.weight.double().T + blk.mlp.c_fc.bias.double()
        m = F.gelu(m) @ blk.mlp.c_proj.weight.double().T + blk.mlp.c_proj.bias.double()
        x_ori = x_ori + m
        if count + 1 in features:
            stored.append((x_new, x_ori))
    surgery, ori = [], []
    for s, o in stored:
        s = s.clone()
        s[:, 0, :] = o[:, 0, :]
        surgery.append(_ln(s, visual.ln_post) @ visual.proj.double())
        ori.append(o)
    return surgery, ori


def test_dual_path_matches_official_emulation(tiny, uint8_images):
    vit = DualPathViT(tiny.clip.visual)
    x = normalize(uint8_images(3, tiny.image_size))
    with torch.no_grad():
        taps = vit(x)
        ref_s, ref_o = official_emulation(tiny.clip.visual, x)
    assert taps.surgery.shape == (3, 4, vit.grid**2 + 1, tiny.clip.visual.proj.shape[1])
    assert taps.ori.shape == (3, 4, vit.grid**2 + 1, vit.width)
    for j in range(4):
        torch.testing.assert_close(taps.surgery[:, j].double(), ref_s[j], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(taps.ori[:, j].double(), ref_o[j], rtol=1e-4, atol=1e-4)


def test_taps_are_mid_block_not_block_outputs(tiny, uint8_images):
    """Guards the section 4.4 quirk: stage 1-3 taps differ from the clean block outputs."""
    vit = DualPathViT(tiny.clip.visual)
    x = normalize(uint8_images(1, tiny.image_size))
    with torch.no_grad():
        taps = vit(x)
        h = vit.embed(x)
        outputs = []
        for blk in tiny.clip.visual.transformer.resblocks:
            h = blk(h)
            outputs.append(h)
    s = vit.stage_len
    for j in range(3):
        assert (taps.ori[:, j] - outputs[s * (j + 1) - 1]).abs().max() > 1e-3
    torch.testing.assert_close(taps.ori[:, 3], outputs[-1], rtol=1e-5, atol=1e-5)


def test_original_path_is_the_clip_image_embedding(tiny, uint8_images):
    """surgery[:, 3, 0] must equal open_clip's own encode_image (nn.MultiheadAttention path)."""
    vit = DualPathViT(tiny.clip.visual)
    x = normalize(uint8_images(2, tiny.image_size))
    with torch.no_grad():
        taps = vit(x)
        ref = tiny.clip.encode_image(x)
    torch.testing.assert_close(taps.surgery[:, 3, 0], ref, rtol=1e-5, atol=1e-5)


def test_batch_elements_are_independent(tiny, uint8_images):
    vit = DualPathViT(tiny.clip.visual)
    x = normalize(uint8_images(4, tiny.image_size, seed=3))
    with torch.no_grad():
        batched = vit(x)
        single = vit(x[2:3])
    torch.testing.assert_close(batched.surgery[2:3], single.surgery, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched.ori[2:3], single.ori, rtol=1e-5, atol=1e-5)


def test_randomize_changes_every_parameter():
    from clipad.model.loading import _open_clip

    oc = _open_clip()
    torch.manual_seed(0)
    default = oc.create_model("clipad-tiny", pretrained=None)
    torch.manual_seed(0)
    model = oc.create_model("clipad-tiny", pretrained=None)
    randomize_parameters(model, seed=5)
    ref = dict(default.named_parameters())
    for name, p in model.named_parameters():
        assert not torch.equal(p, ref[name]), f"{name} kept its default init"
        if p.ndim == 1 and p.numel() > 1:
            assert p.std() > 0.01, f"{name} is (nearly) constant"


def test_rejects_models_sdp_cannot_serve(tiny):
    import copy

    visual = copy.deepcopy(tiny.clip.visual)
    visual.transformer.resblocks = visual.transformer.resblocks[:6]
    with pytest.raises(ValueError, match="divisible by 4"):
        DualPathViT(visual)
