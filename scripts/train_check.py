"""Training figures, in one run on this machine, per model:

- an epoch that runs the frozen backbone on every batch (what training without a cache does),
  timed separately, against epochs trained from the feature cache (the cache's speedup);
- the cache build time and seconds per cached epoch;
- the float16 cache against a float32 one: the same training from each, compared by the
  heads' relative difference and (for the tiny model, whose heads can learn the synthetic
  defects) the held-out pixel AUROC.

    python scripts/train_check.py --out /tmp/train_check [--models clipad-tiny,ViT-B-16-plus-240] [--epochs 3]

Random weights (nothing can be downloaded here), so ViT-B's AUROC is meaningless and only
its timings and the float16/float32 comparison are reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from clipad.core.progress import Tasks
from clipad.data import load_batch, load_split
from clipad.data.synth import make_synthetic
from clipad.evaluation.evaluate import EvalConfig, evaluate
from clipad.model.heads import load_heads
from clipad.model.loading import WeightSpec, load_model
from clipad.model.maps import as_tensor, bilinear_matrix
from clipad.model.preprocess import normalize
from clipad.model.prompts import PROMPT_SETS
from clipad.model.rvs import text_vectors
from clipad.model.surgery import DualPathViT
from clipad.training.train import TrainConfig, heads_step, init_heads, keep_freed_buffers, train


def backbone_epoch(loaded, samples, categories, texts, batch_size: int) -> float:
    """Seconds for one epoch that decodes, resizes and runs the backbone per batch, then steps."""
    vit = DualPathViT(loaded.clip.visual)
    up_ac = as_tensor(bilinear_matrix(vit.grid, loaded.image_size, align_corners=True))
    h = init_heads(vit.width, loaded.clip.visual.proj.shape[1], 42)
    weight, bias = h.weight.clone().requires_grad_(True), h.bias.clone().requires_grad_(True)
    opt = torch.optim.Adam([weight, bias], lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    t0 = time.perf_counter()
    for i in range(0, len(samples), batch_size):
        imgs, chunk, masks = load_batch(samples[i : i + batch_size], loaded.image_size, [])
        with torch.no_grad():
            x = normalize(torch.from_numpy(np.stack(imgs)), loaded.mean, loaded.std)
            ori = vit(x, project=False).ori[:, :, 1:]
        target = torch.from_numpy(np.stack(masks).astype(np.float32))
        text = texts[torch.tensor([categories.index(s.category) for s in chunk])]
        heads_step(ori, target, text, weight, bias, up_ac, opt, scaler)
    return time.perf_counter() - t0


def held_out_pixel_auroc(loaded, split, heads) -> float:
    """Mean per-category pixel AUROC of SDP+ with ``heads``, as `clipad eval --sigma 2` reports it."""
    return evaluate(loaded, split, EvalConfig(method="sdp+", heads=heads, sigma=2.0), Tasks(None)).mean.pixel["auroc"]


def check_model(name: str, out: Path, epochs: int, batch_size: int) -> dict:
    loaded = load_model(WeightSpec(model=name, random_weights=True, seed=1))
    tiny = name == "clipad-tiny"
    # The tiny model's 6x6 grid only resolves defects at 3x the default size.
    scale = 3 if tiny else 1
    make_synthetic(out / f"{name}-train", seed=0, defect_scale=scale)
    make_synthetic(out / f"{name}-test", n_train=0, seed=1, defect_scale=scale)
    split, test = load_split("mvtec", out / f"{name}-train"), load_split("mvtec", out / f"{name}-test")
    samples = [s for c in split for s in split[c]]
    categories = list(split)
    texts = torch.stack(
        [
            torch.from_numpy(
                text_vectors(loaded.clip, loaded.tokenizer, c, "dbscan", "mvtec", PROMPT_SETS["industrial"]).matrix
            )
            for c in categories
        ]
    )
    # The second of two backbone epochs, so one-time start-up costs count in neither figure
    # (the cached figure is likewise the median of the epochs after the first).
    backbone_s = [backbone_epoch(loaded, samples, categories, texts, batch_size) for _ in range(2)][1]
    res: dict = {
        "model": name,
        "images": len(samples),
        "batch_size": batch_size,
        "backbone_epoch_s": round(backbone_s, 3),
    }
    lr = 1e-3 if tiny else 1e-4
    for dtype in ("float16", "float32"):
        cfg = TrainConfig(
            out=out / f"{name}-{dtype}.safetensors",
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            cache_dtype=dtype,
            cache_dir=out / f"{name}-cache",
        )
        log = train(loaded, split, cfg, Tasks(None))
        cached = [e["seconds"] for e in log["epochs"]]
        res[dtype] = {
            "cache_build_s": log["cache_seconds"],
            "cached_epochs_s": cached,
            "final_loss": log["epochs"][-1]["loss"],
            "cache_mb": round(Path(log["cache"], "ori.npy").stat().st_size / 2**20, 1),
        }
    width, dim = DualPathViT(loaded.clip.visual).width, loaded.clip.visual.proj.shape[1]
    h16 = load_heads(out / f"{name}-float16.safetensors", width, dim)
    h32 = load_heads(out / f"{name}-float32.safetensors", width, dim)
    res["heads_rel_diff_fp16_vs_fp32"] = float((h16.weight - h32.weight).norm() / h32.weight.norm())
    res["cached_over_backbone_epoch"] = round(
        float(np.median(res["float16"]["cached_epochs_s"][1:] or res["float16"]["cached_epochs_s"])) / backbone_s, 4
    )
    if tiny:
        res["held_out_pixel_auroc"] = {
            "untrained": held_out_pixel_auroc(loaded, test, init_heads(width, dim, 42)),
            "float16_cache": held_out_pixel_auroc(loaded, test, h16),
            "float32_cache": held_out_pixel_auroc(loaded, test, h32),
        }
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default="clipad-tiny,ViT-B-16-plus-240")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per training run (tiny: 30 to see learning)")
    ap.add_argument("--tiny-epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    keep_freed_buffers()  # as `train` does, so that both epochs run under the same allocator settings
    results = []
    for name in args.models.split(","):
        epochs = args.tiny_epochs if name == "clipad-tiny" else args.epochs
        results.append(check_model(name, args.out, epochs, args.batch_size))
        print(json.dumps(results[-1], indent=2), flush=True)
    (args.out / "train_check.json").write_text(
        json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}, indent=2)
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
