"""Mixed-precision FP16 graph from the FP32 export.

The ViT's work runs in FP16; kept in FP32 (method.md section 9's FP16 risks): every
LayerNormalization, both attention softmaxes together with the logit MatMul and scale feeding
them (V-V logits are |v|^2 / 8 on the diagonal and can overflow fp16), and everything outside
the ViT: the stage projection, feature surgery, the x100 logits, the SDP+
heads, both upsamplings and the blur. Inputs and outputs keep their types (uint8 in, float32
out). Cast nodes make the precision explicit, so TensorRT can build it as a strongly typed
network.

Measured on ViT-B-16-plus-240 with random weights: keeping everything but the ViT's MatMul and
Conv in FP32 (PyTorch autocast's policy) gave the same map error as this policy (about 1e-2
relative on smooth synthetic parts), so the error comes from the FP16 matrix products
themselves, and this policy, with fewer casts, is kept.

onnxruntime's converter passes every value between two FP32 nodes through FP16
(``drop_fp16_round_trips`` removes that): ViT-B-16-plus-240 with random weights, FP16 graph
against FP32 on 6 parity images, relative L2 1.7e-3 with the round trips, 5.1e-4 without (453
Cast nodes -> 273; measured 2026-12-03).
"""

from __future__ import annotations

from pathlib import Path

import onnx

VIT_SCOPE = "/vit/"  # node-name prefix of the dual-path ViT in the TorchScript export
FP32_OPS = ("LayerNormalization", "Softmax")


def fp32_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that must stay in FP32."""
    producer = {out: n for n in graph.node for out in n.output}
    keep = {n.name for n in graph.node if not n.name.startswith(VIT_SCOPE) or n.op_type in FP32_OPS}
    for n in graph.node:
        if n.op_type != "Softmax":
            continue
        node = producer.get(n.input[0])
        while node is not None and node.op_type in ("Mul", "Div", "MatMul"):  # scale, then q k^T
            keep.add(node.name)
            if node.op_type == "MatMul":
                break
            node = next((producer[i] for i in node.input if i in producer), None)
    return sorted(keep)


def drop_duplicate_nodes(graph: onnx.GraphProto) -> int:
    """Remove nodes that recompute an output an identical node already produces.

    Some onnxruntime releases' converter (seen with 1.30) inserts the same FP32 Cast once per
    consumer under one output name, which breaks single assignment. Identical duplicates are
    dropped; anything else producing a name twice is an error. Returns how many were dropped.
    """
    seen: dict[str, onnx.NodeProto] = {}
    kept, dropped = [], 0
    for n in graph.node:
        clash = [o for o in n.output if o in seen]
        if not clash:
            kept.append(n)
            seen.update({o: n for o in n.output})
            continue
        prev = seen[clash[0]]
        same = (
            prev.op_type == n.op_type
            and list(prev.input) == list(n.input)
            and list(prev.output) == list(n.output)
            and [a.SerializeToString() for a in prev.attribute] == [a.SerializeToString() for a in n.attribute]
        )
        if not same:
            raise ValueError(f"two different nodes produce '{clash[0]}' ({prev.name}, {n.name})")
        dropped += 1
    del graph.node[:]
    graph.node.extend(kept)
    return dropped


def drop_fp16_round_trips(graph: onnx.GraphProto, fp32: set[str]) -> int:
    """Feed FP32 tensors straight to the FP32 consumers the converter reaches through FP16.

    onnxruntime's converter (seen with 1.32) casts every output of a blocked (FP32) node to FP16
    and casts it back to FP32 for the next blocked node, so consecutive FP32 nodes still pass
    their values through FP16: rounding at every step, and anything above 65504 (the V-V logits
    the softmax keeps in FP32 for exactly that reason) becomes inf. Each ``Cast(to FP32)`` of a
    ``Cast(to FP16)`` of an FP32 tensor (an output of a node named in ``fp32``, of a cast to
    FP32, or a graph input) is removed and its consumers read that tensor; the FP16 cast stays
    where FP16 nodes still read it, and is removed otherwise. Returns how many round trips were
    removed.
    """
    from onnx import TensorProto

    def cast_to(n: onnx.NodeProto) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    producer = {out: n for n in graph.node for out in n.output}
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    removed = 0
    for n in graph.node:
        if cast_to(n) != TensorProto.FLOAT:
            continue
        half = producer.get(n.input[0])
        if half is None or cast_to(half) != TensorProto.FLOAT16:
            continue
        source = producer.get(half.input[0])
        if source is None:
            fp32_source = half.input[0] in inputs
        else:
            fp32_source = source.name in fp32 or cast_to(source) == TensorProto.FLOAT
        if not fp32_source:
            continue
        if n.output[0] in outputs:  # the graph's output keeps its name: the cast reads the FP32 tensor
            n.input[0] = half.input[0]
        else:
            rename[n.output[0]] = half.input[0]
            dropped.add(id(n))
        removed += 1
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    kept = [n for n in graph.node if id(n) not in dropped]
    read = {i for n in kept for i in n.input} | outputs
    kept = [n for n in kept if n.op_type != "Cast" or any(o in read for o in n.output)]
    del graph.node[:]
    graph.node.extend(kept)
    return removed


def toposort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after the producers of its inputs (the converter's inserted
    Casts can land after their consumers)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input at node {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def convert_fp16(src: str | Path, dst: str | Path) -> dict[str, int]:
    """Write the mixed-precision graph; returns node counts by precision."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    keep = fp32_nodes(model.graph)
    n_nodes = len(model.graph.node)
    mixed = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep, disable_shape_infer=False)
    drop_duplicate_nodes(mixed.graph)
    drop_fp16_round_trips(mixed.graph, set(keep))
    toposort(mixed.graph)
    onnx.save(mixed, str(dst))
    onnx.checker.check_model(str(dst))
    return {"nodes": n_nodes, "fp32_nodes": len(keep), "fp16_nodes": n_nodes - len(keep)}
