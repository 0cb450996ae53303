"""Eager torch CPU latency of the reference model with fused (scaled_dot_product_attention) and
explicit attention, interleaved so both see the same load. Usage:
python scripts/attention_timing.py [MODEL] [BATCH] [REPEATS] [THREADS]"""

from __future__ import annotations

import os
import sys
import time

import torch

from clipad.model.loading import WeightSpec, load_model
from clipad.model.sdp import SDPModel


def main() -> None:
    model_name = sys.argv[1] if len(sys.argv) > 1 else "ViT-B-16-plus-240"
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 2)
    loaded = load_model(WeightSpec(model=model_name, random_weights=True, seed=0))
    d = loaded.clip.visual.proj.shape[1]
    text = torch.nn.functional.normalize(torch.randn(d, 2), dim=0)
    model = SDPModel(loaded.clip.visual, text, loaded.image_size).eval()
    x = torch.randint(0, 256, (batch, loaded.image_size, loaded.image_size, 3), dtype=torch.uint8)
    times: dict[bool, list[float]] = {True: [], False: []}
    with torch.no_grad():
        for fused in (True, False):  # warm-up
            model.vit.fused = fused
            model(x)
        for _ in range(repeats):
            for fused in (True, False):
                model.vit.fused = fused
                t0 = time.perf_counter()
                model(x)
                times[fused].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
    print(
        f"{model_name} batch {batch}, {torch.get_num_threads()} threads, load {os.getloadavg()}: "
        f"fused {med[True]:.1f} ms, explicit {med[False]:.1f} ms (medians of {repeats}), "
        f"ratio {med[True] / med[False]:.3f}"
    )


if __name__ == "__main__":
    main()
