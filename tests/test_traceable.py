"""The reference traces to ONNX as it is: explicit ops, no in-place aliasing, dynamic batch.

`clipad export` builds the product graph from the reference; this guards the property that makes
that possible (explicit tensor operations that trace to ONNX cleanly), using the TorchScript
exporter at opset 17 and ONNX Runtime on the CPU.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from clipad.model.sdp import SDPModel
from tests.helpers import random_heads, random_text


@pytest.mark.parametrize("mode", ["sdp", "sdp+"])
def test_sdp_model_exports_with_dynamic_batch(tiny, tmp_path, mode):
    visual = tiny.clip.visual
    heads = random_heads(visual.conv1.out_channels, visual.proj.shape[1]) if mode == "sdp+" else None
    model = SDPModel(visual, random_text(visual.proj.shape[1]), tiny.image_size, heads=heads).eval()
    size = tiny.image_size
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(2, size, size, 3, dtype=torch.uint8),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["anomaly_map", "image_prob"],
            dynamic_axes={"image": {0: "batch"}, "anomaly_map": {0: "batch"}, "image_prob": {0: "batch"}},
        )
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert "LayerNormalization" in ops and not ops & {"ScatterND", "Loop", "If"}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randint(
            0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(batch)
        )
        with torch.no_grad():
            ref_map, ref_prob = model(x)
        amap, prob = session.run(None, {"image": x.numpy()})
        assert amap.shape == (batch, size, size) and prob.shape == (batch,)
        np.testing.assert_allclose(amap, ref_map.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(prob, ref_prob.numpy(), rtol=1e-4, atol=1e-6)
