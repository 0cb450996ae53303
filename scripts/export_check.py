"""Figures for the export issue, in one run on this machine: per-image time at batch 1 of ONNX
Runtime (CPU, FP32 and FP16 graphs) against the PyTorch reference, and the graphs' parity on
random-noise images as well as on the export's own synthetic inputs.

    python scripts/export_check.py --artifacts artifacts/bottle [--rounds 5]

Rounds interleave the backends so that machine noise hits them alike; the median is quoted.
When the artifacts hold no FP16 graph (dropped for parity), one is converted into a temporary
directory to be measured. `clipad bench` (benchmark issue) will replace this script.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipad_export.artifacts import ONNX_FP16, ONNX_FP32, hash_files, load_artifacts  # noqa: E402
from clipad_export.parity import compare, parity_images  # noqa: E402
from runtime.backends import open_backend  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    art = load_artifacts(args.artifacts)
    tmp = None
    if ONNX_FP16 not in art.manifest["files"]:
        from clipad_export.fp16 import convert_fp16

        tmp = Path(tempfile.mkdtemp())
        for f in art.root.iterdir():
            shutil.copy2(f, tmp / f.name)
        convert_fp16(tmp / ONNX_FP32, tmp / ONNX_FP16)
        art.manifest["files"].update(hash_files(tmp, [ONNX_FP16]))
        art.manifest["precisions"] = ["fp32", "fp16"]
        art = type(art)(tmp, art.manifest)
    size = art.image_size
    backends = {"torch fp32": open_backend(art, "torch", "fp32", "cpu"),
                "onnxruntime fp32": open_backend(art, "onnxruntime", "fp32", "cpu"),
                "onnxruntime fp16": open_backend(art, "onnxruntime", "fp16", "cpu")}
    x1 = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    for b in backends.values():
        b(x1)  # warm-up
    times = {k: [] for k in backends}
    for _ in range(args.rounds):
        for k, b in backends.items():
            t0 = time.perf_counter()
            b(x1)
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    res = {"batch1_seconds_median": med,
           "ratio_onnxruntime_fp32_over_torch": med["onnxruntime fp32"] / med["torch fp32"],
           "ratio_onnxruntime_fp16_over_torch": med["onnxruntime fp16"] / med["torch fp32"]}
    noise = np.random.default_rng(1).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    for label, images in (("noise images", noise), ("export's synthetic inputs", parity_images(size, 3))):
        ref = backends["torch fp32"](images)
        f32 = backends["onnxruntime fp32"](images)
        f16 = backends["onnxruntime fp16"](images)
        res[f"parity on {label}"] = {"fp32 vs torch": compare(*ref, *f32), "fp16 vs fp32 onnx": compare(*f32, *f16)}
    print(json.dumps(res, indent=2))
    if tmp:
        shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
