"""AnomalyDINO detection on a `clipad synth` set with seeded random DINOv2 weights (issue 27's
detection goal), through clipad.model.anomalydino as the graph computes it.

Protocol (the official few-shot one): references sorted(train/good)[seed * K:(seed + 1) * K],
the whole test split scored; images resized with the official policy (smaller edge =
--resolution, crop to multiples of 14: ``clipad.data.images.resize_smaller_edge``); masks
resized the same way (bilinear, >= 0.5); pixel AUROC over the maps at the model's size, image
AUROC of the top-1% score. Masking off (the synth categories are not MVTec AD / VisA names), no
coreset. Prints one JSON object.

    python scripts/anomalydino_check.py --root synth --shots 4 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image


def load(path: Path, resolution: int, mask: bool = False) -> np.ndarray:
    from clipad.data.images import read_rgb, resize_smaller_edge, smaller_edge_size

    rgb = read_rgb(path)
    if not mask:
        return resize_smaller_edge(rgb, resolution, 14)
    binary = ((rgb.max(axis=2) > 0) * 255).astype(np.uint8)
    nh, nw = smaller_edge_size(binary.shape[0], binary.shape[1], resolution)
    resized = np.asarray(Image.fromarray(binary).resize((nw, nh), Image.Resampling.BILINEAR)) >= 128
    return resized[: nh - nh % 14, : nw - nw % 14]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seeds", default="0")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--backbone", default="dinov2_vits14")
    p.add_argument("--rotations", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from clipad.evaluation.metrics import binary_metrics
    from clipad.methods.anomalydino import official_references
    from clipad.model.anomalydino import AnomalyDinoModel, build_memory
    from clipad.model.dinov2 import DinoFeatures, random_state

    torch.set_num_threads(args.threads)
    state = random_state(args.backbone, 0)
    out: dict = {"shots": args.shots, "resolution": args.resolution, "rotations": args.rotations, "categories": {}}
    t0 = time.perf_counter()
    for cat in sorted(d.name for d in args.root.iterdir() if d.is_dir()):
        good = list((args.root / cat / "train" / "good").glob("*.png"))
        tests = sorted((args.root / cat / "test").glob("*/*.png"))
        images = np.stack([load(t, args.resolution) for t in tests])
        labels = np.array([t.parent.name != "good" for t in tests])
        masks = np.stack(
            [
                load(args.root / cat / "ground_truth" / t.parent.name / f"{t.stem}_mask.png", args.resolution, True)
                if t.parent.name != "good"
                else np.zeros(images.shape[1:3], bool)
                for t in tests
            ]
        )
        features = DinoFeatures(args.backbone, state, images.shape[1:3])
        rows = []
        for seed in (int(s) for s in args.seeds.split(",")):
            refs = official_references(good, args.shots, seed)
            memory = build_memory(features, np.stack([load(r, args.resolution) for r in refs]), args.rotations)
            model = AnomalyDinoModel(features, memory.tokens, masking=False).eval()
            with torch.no_grad():
                outs = [model(torch.from_numpy(images[i : i + 8])) for i in range(0, len(images), 8)]
            amap, score = (torch.cat([o[j] for o in outs]).numpy() for j in (0, 1))
            rows.append(
                {
                    "seed": seed,
                    "memory": int(memory.tokens.shape[0]),
                    "pixel_auroc": binary_metrics(masks, amap)["auroc"],
                    "image_auroc": binary_metrics(labels, score)["auroc"],
                }
            )
        out["categories"][cat] = rows
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["load_average"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
