"""AnomalyDINO's cost beside CLIP-AD's SDP, measured in one run (issue 27's cost goal).

Builds, with seeded random weights, SDP on ViT-B-16-plus-240 (240 px) and AnomalyDINO on
ViT-S/14 at each --resolutions (K good images in the memory, masking off, without and with the
8 rotations), exports each to its FP32 ONNX graph (clipad.deploy.onnx_graph.export_onnx, as
`clipad export` does), and times batch-1 calls of every graph in ONNX Runtime on the CPU
(clipad's runner, the session options every clipad path uses). The graphs are timed in
interleaved rounds, so that a change in the machine's load touches all of them alike; the
figures are the median per graph over all rounds, and each graph's ratio to SDP's.
Analytic FLOPs per image beside them (clipad.model.flops; the methods' own counts).
With --openvino-artifacts, an AnomalyDINO export made with `clipad export --openvino
--gate-data ...`: its OpenVINO INT8 IR is timed in the same rounds (OpenVINO latency mode,
batch 1), with the IR's quality gate as the manifest records it.

    python scripts/anomalydino_cost.py --json dino_cost.json   # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from clipad.data.geometry import Geometry


@dataclass
class Graph:
    name: str
    path: Path
    size: int | Geometry  # S (an S x S input) or the export's geometry
    memory_patches: int
    gflops: float
    samples_ms: list[float]

    @property
    def p50(self) -> float:
        return float(np.median(self.samples_ms))


def sdp_graph(folder: Path) -> Graph:
    from clipad.deploy.onnx_graph import export_onnx
    from clipad.methods.registry import get_method
    from clipad.model.flops import ViTDims
    from clipad.model.loading import WeightSpec, load_model

    loaded = load_model(WeightSpec(model="ViT-B-16-plus-240", random_weights=True, seed=0))
    text = torch.nn.functional.normalize(torch.randn(loaded.clip.visual.proj.shape[1], 2), dim=0)
    method = get_method("sdp")
    model = method.build(loaded, text, 8.0).eval()
    path = folder / "sdp.onnx"
    export_onnx(model, path)
    flops = method.flops(ViTDims.from_visual(loaded.clip.visual, loaded.image_size))["total"]
    return Graph("SDP ViT-B-16-plus-240", path, loaded.image_size, 0, flops / 1e9, [])


def dino_graph(folder: Path, size: int, shots: int, rotations: bool) -> Graph:
    from clipad.deploy.onnx_graph import export_onnx
    from clipad.deploy.parity import parity_images
    from clipad.methods.anomalydino import METHOD
    from clipad.model.dinov2 import ARCHS, random_state

    arch = ARCHS["dinov2_vits14"]
    good = np.concatenate([parity_images(size, 3, seed=s) for s in range(1 + shots // 3)])[:shots]
    model, _ = METHOD.build_model("dinov2_vits14", random_state("dinov2_vits14", 0), good, rotations, False)
    memory = int(model.memory.shape[0])
    path = folder / f"dino_{size}_{'rot' if rotations else 'plain'}.onnx"
    export_onnx(model, path, (size, size))
    dims = arch.dims(size, size)
    name = f"AnomalyDINO ViT-S/14 {size} px K={shots}{' + rotations' if rotations else ''}"
    return Graph(name, path, size, memory, METHOD.flops(dims, memory)["total"] / 1e9, [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--resolutions", default="224,336,448")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--calls", type=int, default=5, help="timed calls per graph and round")
    p.add_argument("--json", type=Path)
    p.add_argument("--openvino-artifacts", type=Path, help="an AnomalyDINO export with its OpenVINO INT8 IR")
    args = p.parse_args()

    from clipad.deploy.parity import parity_images
    from clipad.deploy.runners.onnxruntime import OnnxRuntimeRunner
    from clipad.runtime.bench.machine import machine_info
    from clipad.runtime.bench.timing import time_calls

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        graphs = [sdp_graph(folder)]
        for size in (int(r) for r in args.resolutions.split(",")):
            graphs += [dino_graph(folder, size, args.shots, rot) for rot in (False, True)]
        runners: list = [OnnxRuntimeRunner(g.path, "fp32", "cpu", max_batch=1) for g in graphs]
        gate = None
        if args.openvino_artifacts:
            from clipad.deploy.artifacts import load_artifacts
            from clipad.deploy.runners.openvino import OpenVinoRunner

            art = load_artifacts(args.openvino_artifacts)
            m, ov = art.manifest, art.manifest.openvino
            if ov is None or "int8" not in ov.ir or m.anomalydino is None:
                raise SystemExit(f"{art.root} is not an AnomalyDINO export with an OpenVINO INT8 IR")
            entry = m.anomalydino
            g = ov.gates["int8"] if ov.gates else None
            gate = (
                None
                if g is None
                else {"passed": g.passed, "pixel_drop": g.pixel_drop_points, "image_drop": g.image_drop_points}
            )
            name = f"AnomalyDINO ViT-S/14 {art.geometry} K={entry.shots} OpenVINO INT8"
            graphs.append(Graph(name, art.root / ov.ir["int8"], art.geometry, entry.patches, 0.0, []))
            runners.append(OpenVinoRunner(art.root / ov.ir["int8"], "int8", 1))
        inputs = [parity_images(g.size, 1, seed=7) for g in graphs]
        for runner, x in zip(runners, inputs, strict=True):
            time_calls(lambda r=runner, x=x: r.run(x), warmup=2, iterations=1)
        for _ in range(args.rounds):
            for g, runner, x in zip(graphs, runners, inputs, strict=True):
                g.samples_ms += time_calls(lambda r=runner, x=x: r.run(x), warmup=0, iterations=args.calls)
        for runner in runners:
            runner.close()
    sdp = graphs[0].p50
    machine = machine_info()
    print(
        f"CPU: {machine['cpu']} ({', '.join(machine['cpu_matrix_features']) or 'no matrix features'}); "
        f"ONNX Runtime {machine.get('onnxruntime')} FP32, batch 1, {args.rounds} x {args.calls} calls each"
    )
    print("| graph | memory patches | GFLOPs | p50 ms | vs SDP |\n|---|---|---|---|---|")
    for g in graphs:
        flops = f"{g.gflops:.1f}" if g.gflops else "-"
        print(f"| {g.name} | {g.memory_patches:,} | {flops} | {g.p50:.1f} | {g.p50 / sdp:.2f}x |")
    if gate is not None:
        print(f"OpenVINO INT8 quality gate (from the manifest): {gate}")
    if args.json:
        rows = [{**asdict(g), "path": g.path.name, "p50_ms": g.p50, "vs_sdp": g.p50 / sdp} for g in graphs]
        args.json.write_text(
            json.dumps({"machine": machine, "rows": rows, "openvino_int8_gate": gate}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
