"""The normal-reference mode's goals, measured in one run (figures for docs/benchmarks.md).

On the default `clipad synth` set (generated here unless --root is given) with the chosen model
(default ViT-B-16-plus-240, random weights):

1. detection: pixel and image AUROC of the zero-shot SDP model, of the fused mode (zero-shot +
   reference) with K shots over the shot seeds, and of the reference mode, all with the same
   weights in this run (``clipad.evaluation``: the same code as `clipad eval [--shots]`);
2. cost: the zero-shot and the K-shot fused graph of one category exported as `clipad export`
   does, their ONNX Runtime latency at batch 1 (interleaved, median of --iterations each,
   --threads intra-op threads) and file sizes;
3. the memory bound: patches kept, coverage radius and bytes for several --memory-patches at the
   largest K the training split allows;
4. precision: the exported FP16 graph (and with --int8 an INT8 graph made by `clipad calibrate
   --int8` on the category's good training images) against the FP32 graph on the test set: AUROC drop.

Writes a JSON file and prints a markdown summary. Figures are from whatever the machine's load
allows: the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def cpu_info() -> dict:
    from clipad.runtime.bench.machine import machine_info

    m = machine_info()
    return {"model": m["cpu"], "cpus": m["cpu_count"], "flags": m["cpu_matrix_features"]}


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def graph_metrics(path: Path, samples, size: int, threads: int):
    """Run a graph over test samples: image AUROC of image_prob, pixel AUROC."""
    import numpy as np
    import onnxruntime as ort

    from clipad.data import load_batch
    from clipad.evaluation.metrics import binary_metrics

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    maps, probs, labels, masks, skipped = [], [], [], [], []
    for i in range(0, len(samples), 4):
        imgs, kept, m = load_batch(samples[i : i + 4], size, skipped)
        amap, prob = sess.run(None, {"image": np.stack(imgs)})
        maps.append(amap)
        probs.append(prob)
        labels += [s.label for s in kept]
        masks += m
    maps, probs = np.concatenate(maps), np.concatenate(probs)
    return {
        "image_prob_auroc": binary_metrics(np.array(labels), probs)["auroc"],
        "map_max_auroc": binary_metrics(np.array(labels), maps.reshape(len(maps), -1).max(1))["auroc"],
        "pixel_auroc": binary_metrics(np.stack(masks), maps)["auroc"],
    }


def latency(paths: dict[str, Path], size: int, threads: int, iterations: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in paths.items()}
    x = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {"image": x})
    times = {k: [] for k in sessions}
    for _ in range(iterations):  # interleaved, so load changes hit both graphs alike
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"image": x})
            times[k].append(time.perf_counter() - t0)
    return {k: {"p50_ms": 1000 * statistics.median(v), "min_ms": 1000 * min(v)} for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="MVTec-layout dataset (default: `clipad synth` defaults, generated)")
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--seed", type=int, default=0, help="random-weights seed")
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--shot-seeds", default="0,1,2")
    ap.add_argument("--latency-category", default="fabric")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument(
        "--reference-seeds", default="0", help="shot seeds of the reference-mode row (K good images drawn per seed)"
    )
    ap.add_argument("--k1", action="store_true", help="also the fused mode with K = 1 over the shot seeds")
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--work", type=Path, help="where graphs are written (default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=Path("reference_check.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from clipad.core.progress import Tasks
    from clipad.data import load_split
    from clipad.data.images import load_image
    from clipad.data.synth import make_synthetic
    from clipad.deploy.export import ExportConfig, export
    from clipad.deploy.manifest import ONNX_FP16, ONNX_FP32
    from clipad.deploy.reference_set import ReferenceConfig
    from clipad.evaluation.evaluate import EvalConfig, evaluate
    from clipad.evaluation.shots import evaluate_shots, train_good_images
    from clipad.model.loading import WeightSpec, load_model
    from clipad.model.prompts import PROMPT_SETS
    from clipad.model.reference import build_memory, encode, stage_patches
    from clipad.model.rvs import text_vectors
    from clipad.model.sdp import SDPModel

    work = args.work or Path(tempfile.mkdtemp(prefix="reference_check-"))
    root = args.root
    if root is None:
        root = work / "synth"
        if not root.is_dir():
            make_synthetic(root, 4, 6, 4, 160, 128, 0, False, 1.0)
    seeds = [int(s) for s in args.shot_seeds.split(",")]
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_info(),
        "threads": args.threads,
        "model": args.model,
        "weights": f"random (seed {args.seed})",
        "root": str(root),
        "shots": args.shots,
        "shot_seeds": seeds,
        "load_start": load_avg(),
    }
    t_start = time.perf_counter()

    def save() -> None:  # after every stage, so a run cut short keeps what it measured
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")

    loaded = load_model(WeightSpec(model=args.model, random_weights=True, seed=args.seed))
    split = load_split("mvtec", root)
    tasks = Tasks(None)
    cfg = EvalConfig(dataset="mvtec")

    def summary(results):
        return {
            c: {
                "image_auroc": r["image"]["auroc"],
                "image_prob_auroc": r["image_prob"]["auroc"],
                "pixel_auroc": r["pixel"]["auroc"],
                **(
                    {
                        "std": {
                            "image_auroc": r["shots"]["std"]["image"]["auroc"],
                            "image_prob_auroc": r["shots"]["std"]["image_prob"]["auroc"],
                            "pixel_auroc": r["shots"]["std"]["pixel"]["auroc"],
                        },
                        "reference_images": r["shots"]["reference_images"],
                    }
                    if "shots" in r
                    else {}
                ),
            }
            for c, r in results.to_json().items()
        }

    report["detection"] = {"zero_shot": summary(evaluate(loaded, split, cfg, tasks))}
    print("zero-shot done", flush=True)
    save()
    report["detection"][f"fused_k{args.shots}"] = summary(
        evaluate_shots(loaded, split, cfg, root, args.shots, seeds, tasks)
    )
    print("fused done", flush=True)
    save()
    ref_seeds = [int(s) for s in args.reference_seeds.split(",")]
    report["detection"][f"reference_k{args.shots}"] = summary(
        evaluate_shots(loaded, split, replace(cfg, method="reference"), root, args.shots, ref_seeds, tasks)
    )
    print("reference done", flush=True)
    save()
    if args.k1:
        report["detection"]["fused_k1"] = summary(evaluate_shots(loaded, split, cfg, root, 1, seeds, tasks))
        print("k1 done", flush=True)
        save()

    # The memory bound at the largest K available.
    cat = args.latency_category
    files = train_good_images("mvtec", root, cat)
    tv = text_vectors(loaded.clip, loaded.tokenizer, cat, "dbscan", "mvtec", PROMPT_SETS["industrial"])
    base = SDPModel(loaded.clip.visual, torch.from_numpy(tv.matrix), loaded.image_size).eval()
    tokens, _ = encode(base, np.stack([load_image(p, loaded.image_size) for p in files]))
    pool = stage_patches(tokens)
    report["memory"] = {
        "k": len(files),
        "patches_per_image": int(tokens.shape[2]),
        "width": int(tokens.shape[3]),
        "bounds": [],
    }
    for n in (64, 256, 1024):
        mem = build_memory(pool, n)
        report["memory"]["bounds"].append(
            {
                "memory_patches": n,
                "kept_per_stage": int(mem.tokens.shape[1]),
                "radius_max": max(mem.radius),
                "bytes": mem.nbytes,
            }
        )

    # Graphs: zero-shot and K-shot fused of one category, and K-shot fused of every category for precision.
    graphs = {}
    for name, category, ref in [("zero_shot", cat, None)] + [(f"fused_k{args.shots}_{c}", c, True) for c in split]:
        out = work / name
        rc = ReferenceConfig(str(root / category / "train" / "good"), args.shots) if ref else None
        ecfg = ExportConfig(
            category=category, out=out, prompts=PROMPT_SETS["industrial"], max_batch=4, precision="all", reference=rc
        )
        t0 = time.perf_counter()
        art = export(loaded, ecfg, tasks)
        graphs[name] = {"dir": out, "export_s": time.perf_counter() - t0, "manifest": art.manifest}
        print(f"exported {name}", flush=True)
    fused = f"fused_k{args.shots}_{cat}"
    sizes = {k: (g["dir"] / ONNX_FP32).stat().st_size for k, g in graphs.items() if k in ("zero_shot", fused)}
    report["cost"] = {
        "graph_bytes": sizes,
        "graph_growth": sizes[fused] / sizes["zero_shot"],
        "memory_bytes": graphs[fused]["manifest"].reference.memory_bytes,
        "parity_fp32_rel_l2": {k: g["manifest"].parity.figures("fp32").rel_l2 for k, g in graphs.items()},
        "fp16": {
            k: (g["manifest"].parity.figures("fp16").model_dump() if g["manifest"].parity.figures("fp16") else None)
            for k, g in graphs.items()
        },
        "load_before_latency": load_avg(),
    }
    lat = latency(
        {"zero_shot": graphs["zero_shot"]["dir"] / ONNX_FP32, fused: graphs[fused]["dir"] / ONNX_FP32},
        loaded.image_size,
        args.threads,
        args.iterations,
    )
    report["cost"]["latency_batch1"] = lat
    report["cost"]["latency_ratio_p50"] = lat[fused]["p50_ms"] / lat["zero_shot"]["p50_ms"]
    report["cost"]["load_after_latency"] = load_avg()
    print("latency done", flush=True)
    save()

    from clipad.deploy.tensorrt.parser_check import unsupported_ops

    report["tensorrt_parser_check"] = {k: unsupported_ops(g["dir"] / ONNX_FP32) for k, g in graphs.items()}

    precision: dict = {}
    for c, samples in split.items():
        g = graphs[f"fused_k{args.shots}_{c}"]["dir"]
        precision[c] = {"fp32": graph_metrics(g / ONNX_FP32, samples, loaded.image_size, args.threads)}
        if (g / ONNX_FP16).is_file():
            precision[c]["fp16"] = graph_metrics(g / ONNX_FP16, samples, loaded.image_size, args.threads)
        else:  # dropped by the export's parity gate: measure the graph anyway, with the reason
            from clipad.deploy.fp16 import convert_fp16

            convert_fp16(g / ONNX_FP32, work / f"{c}.fp16.onnx")
            precision[c]["fp16"] = graph_metrics(work / f"{c}.fp16.onnx", samples, loaded.image_size, args.threads)
            precision[c]["fp16_note"] = (
                "export dropped the FP16 graph (parity gate); converted here with the same policy"
            )
        if args.int8:
            from clipad.calibration.int8 import make_int8
            from clipad.deploy.artifacts import load_artifacts
            from clipad.deploy.manifest import ONNX_INT8

            good = np.stack([load_image(p, loaded.image_size) for p in train_good_images("mvtec", root, c)])
            try:
                make_int8(load_artifacts(g), good, tasks, 0.0)
                precision[c]["int8"] = graph_metrics(g / ONNX_INT8, samples, loaded.image_size, args.threads)
            except Exception as err:  # recorded, not hidden
                precision[c]["int8_error"] = str(err)
        print(f"precision {c} done", flush=True)
        save()
    report["precision"] = precision
    report["load_end"] = load_avg()
    report["total_s"] = time.perf_counter() - t_start
    args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
