"""Fused attention (scaled_dot_product_attention) in eager torch against the explicit form, and
the exported graph unchanged by it."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch

from clipad.deploy.fp16 import fp32_nodes
from clipad.deploy.onnx_graph import export_onnx
from clipad.model.loading import WeightSpec, load_model
from clipad.model.sdp import SDPModel
from clipad.model.surgery import attention, vv_attention


def _model(loaded, heads=None) -> SDPModel:
    d = loaded.clip.visual.proj.shape[1]
    text = torch.nn.functional.normalize(torch.randn(d, 2, generator=torch.Generator().manual_seed(0)), dim=0)
    return SDPModel(loaded.clip.visual, text, loaded.image_size, 2.0, heads).eval()


def _maps(model: SDPModel, images: torch.Tensor, fused: bool):
    model.vit.fused = fused
    with torch.no_grad():
        return model(images)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_fused_attention_is_the_explicit_formula():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 17, 8, generator=g) * 3 for _ in range(3))
    for fn, args in ((attention, (q, k, v)), (vv_attention, (v,))):
        fused = fn(*args, 0.125, True)
        qq, kk, vv = args * 3 if len(args) == 1 else args
        ref = torch.softmax((qq.double() @ kk.double().transpose(-1, -2)) * 0.125, dim=-1) @ vv.double()
        torch.testing.assert_close(fused.double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fn(*args, 0.125, False).double(), ref, rtol=1e-5, atol=1e-5)


def test_fused_and_explicit_maps_agree(tiny, uint8_images):
    model = _model(tiny)
    x = uint8_images(3, tiny.image_size, seed=4)
    fused_map, fused_prob = _maps(model, x, True)
    ref_map, ref_prob = _maps(model, x, False)
    assert _rel(fused_map, ref_map) <= 1e-5
    torch.testing.assert_close(fused_prob, ref_prob, rtol=1e-5, atol=1e-6)


def test_export_graph_unchanged_by_fusion(tiny, tmp_path):
    """The exported graph has the same nodes in both modes (the explicit form is traced), with
    its Softmax nodes and their logit MatMuls that the reduced precisions keep in FP32."""
    model = _model(tiny)
    graphs = {}
    for fused in (True, False):
        model.vit.fused = fused
        path = tmp_path / f"{fused}.onnx"
        export_onnx(model, path)
        graphs[fused] = onnx.load(str(path)).graph
    ops = {k: [n.op_type for n in g.node] for k, g in graphs.items()}
    assert ops[True] == ops[False]
    counts = Counter(ops[True])
    n_blocks = len(tiny.clip.visual.transformer.resblocks)
    assert counts["Softmax"] >= 2 * n_blocks  # both attentions of every block (+ the post-ViT softmaxes)
    keep = set(fp32_nodes(graphs[True]))
    vit_softmax_logits = [
        n for n in graphs[True].node if n.op_type == "MatMul" and n.name.startswith("/vit/") and n.name in keep
    ]
    assert len(vit_softmax_logits) == 2 * n_blocks


@pytest.mark.slow
def test_fused_and_explicit_maps_agree_full_size(uint8_images):
    loaded = load_model(WeightSpec(model="ViT-B-16-plus-240", random_weights=True, seed=0))
    model = _model(loaded)
    x = uint8_images(1, loaded.image_size, seed=2)
    fused_map, _ = _maps(model, x, True)
    ref_map, _ = _maps(model, x, False)
    assert _rel(fused_map, ref_map) <= 1e-5
