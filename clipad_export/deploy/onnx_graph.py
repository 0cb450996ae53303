"""Export the reference SDPModel (or AnomalyDinoModel) as one ONNX graph: uint8 image in, map and
probability out.

The exported module *is* the reference (clipad.model.sdp.SDPModel): normalisation, the
dual-path ViT, feature surgery, the SDP+ heads, both upsampling conventions and the blur (as
constant matrix products, method.md section 9) and the image probability, with the text
vectors and heads as constants. Nothing is re-implemented for export, so the graph cannot
drift from the reference. The TorchScript exporter at opset 17 keeps LayerNorm as one
LayerNormalization node; only the batch dimension is dynamic.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from clipad.core.errors import ClipadError
from clipad.model.anomalydino import AnomalyDinoModel
from clipad.model.sdp import SDPModel

OPSET = 17
INPUT = "image"
OUTPUTS = ("anomaly_map", "image_prob")


def export_onnx(model: SDPModel | nn.Module, path: str | Path, size: tuple[int, int] | None = None) -> None:
    """Write ``model`` to ``path`` (float32 graph, dynamic batch) and check it with onnx.checker.

    ``size``: the input's (H, W); default the SDPModel's square ``image_size`` or the
    AnomalyDinoModel's ``size``."""
    if size is None:
        assert isinstance(model, SDPModel | AnomalyDinoModel), "size is needed for another model"
        size = (model.image_size, model.image_size) if isinstance(model, SDPModel) else model.size
    h, w = size
    example = torch.zeros(2, h, w, 3, dtype=torch.uint8, device=next(model.parameters()).device)
    batch = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        with torch.no_grad():
            torch.onnx.export(
                model.eval(),
                (example,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT],
                output_names=list(OUTPUTS),
                dynamic_axes={INPUT: batch, OUTPUTS[0]: batch, OUTPUTS[1]: batch},
            )
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as err:
        raise ClipadError(f"the exported graph failed onnx.checker: {str(err).splitlines()[0]}") from None
