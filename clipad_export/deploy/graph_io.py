"""An ONNX graph's inputs and outputs as the manifest records them, and the check that a graph
file has the ones its manifest says (torch-free: serving runs it when it opens a graph)."""

from __future__ import annotations

from pathlib import Path

import onnx

from clipad.core.errors import IntegrityError
from clipad.deploy.manifest import MANIFEST, Manifest, OnnxSpec, graph_image_size

_ONNX_DTYPES = {onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


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


def check_graph(manifest: Manifest, path: Path) -> None:
    """One line (IntegrityError) when the graph at ``path`` does not take the manifest's
    ``image_size`` or its inputs and outputs differ from the manifest's ``onnx`` record: the
    manifest was edited after export, and the runtime would size its images by it."""
    spec = OnnxSpec.create(**io_spec(path), opset=manifest.onnx.opset)
    taken = graph_image_size(spec.inputs)
    if taken != manifest.image_size:
        raise IntegrityError(
            f"{path.parent / MANIFEST}: image_size: {manifest.image_size}, but the graph {path.name} takes {taken}; "
            "re-export"
        )
    for side in ("inputs", "outputs"):
        ours, theirs = getattr(manifest.onnx, side), getattr(spec, side)
        if ours != theirs:
            have = ", ".join(f"{t.name} {t.dtype} {t.shape}" for t in theirs)
            raise IntegrityError(f"{path.parent / MANIFEST}: onnx.{side}: not those of {path.name} ({have}); re-export")
