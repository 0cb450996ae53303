"""Export the reference SDPModel as one ONNX graph: uint8 image in, map and probability out.

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

from clipad.core.errors import ClipadError
from clipad.model.sdp import SDPModel

OPSET = 17
INPUT = "image"
OUTPUTS = ("anomaly_map", "image_prob")
_ONNX_DTYPES = {onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


def export_onnx(model: SDPModel, path: str | Path) -> None:
    """Write ``model`` to ``path`` (float32 graph, dynamic batch) and check it with onnx.checker."""
    size = model.image_size
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8, device=model.text.device)
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


def io_spec(path: str | Path) -> dict[str, list[dict]]:
    """Names, dtypes and shapes (symbolic dims as strings) of a graph's inputs and outputs."""
    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
            out.append({"name": v.name, "dtype": _ONNX_DTYPES.get(t.elem_type, str(t.elem_type)), "shape": dims})
        return out

    return {"inputs": describe(graph.input), "outputs": describe(graph.output)}
