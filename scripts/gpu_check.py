"""GPU check: the CUDA tests, the reference's parity on the GPU, and torch timings.

One command for a machine with a CUDA GPU (minutes, not hours):

    python3 scripts/gpu_check.py --out DIR

Writes DIR/gpu_check.json, DIR/gpu_check.md and DIR/pytest_gpu.log. Measured: the reference
SDP model (ViT-B-16-plus-240, random weights: timings and numerics do not depend on the
weights' values) in FP32 and FP16 autocast at batch 1/8/32 (latency p50/p90/p99 over CUDA
events, warm-up excluded, throughput, peak GPU memory), a plain open_clip image encoding at the
same settings (the dual path's cost), FLOPs of one forward (torch's FlopCounterMode) against a
measured matrix-multiply ceiling, and parity of CUDA FP32/FP16 against the CPU FP32 reference.
TensorRT and onnxruntime-gpu are not installable on the machines this project is lent, so the
torch figures are what is measured here.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipad_export.models import WeightSpec, load_model  # noqa: E402
from clipad_export.parity import compare  # noqa: E402
from clipad_export.sdp import SDPModel  # noqa: E402

MODEL = "ViT-B-16-plus-240"
BATCHES = (1, 8, 32)


def cuda_times(fn, warmup: int, iters: int) -> list[float]:
    """Milliseconds per call, each bracketed by CUDA events, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():  # --dry-run on a CPU machine: wall clock
        out = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1000)
        return out
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    return out


def stats(ms: list[float], batch: int) -> dict:
    p = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": round(p[0], 3), "p90_ms": round(p[1], 3), "p99_ms": round(p[2], 3),
            "min_ms": round(min(ms), 3), "n": len(ms), "images_per_s": round(batch / p[0] * 1000, 1)}


def matmul_ceiling(dtype: torch.dtype, n: int = 8192) -> float:
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    n = n if dev == "cuda" else 512
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    ms = cuda_times(lambda: a @ b, 3, 10)
    return 2 * n**3 / (np.median(ms) / 1000) / 1e12


def flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def parity(ref_map, ref_prob, amap, prob) -> dict:
    return compare(*(t.detach().float().cpu().numpy() for t in (ref_map, ref_prob, amap, prob)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="check this script on a CPU with the tiny model")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    global MODEL, BATCHES
    dev = "cuda"
    if args.dry_run:
        MODEL, BATCHES, dev = "clipad-tiny", (1, 2), "cpu"
    elif not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU", file=sys.stderr)
        return 1
    res: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else "none (dry run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "model": MODEL,
        "weights": "random (timings and numerics do not depend on weight values)",
    }
    if not args.skip_tests:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", str(ROOT / "tests" / "test_gpu.py")],
                              cwd=ROOT, capture_output=True, text=True)
        (args.out / "pytest_gpu.log").write_text(proc.stdout + proc.stderr)
        res["tests"] = {"returncode": proc.returncode, "summary": (proc.stdout.strip().splitlines() or [""])[-1],
                        "seconds": round(time.perf_counter() - t0, 1)}
        print("tests:", res["tests"], flush=True)

    spec = WeightSpec(model=MODEL, random_weights=True, seed=0)
    cpu = load_model(spec, "cpu")
    gpu = load_model(spec, dev)
    size, dim = gpu.image_size, gpu.clip.visual.proj.shape[1]
    text = torch.nn.functional.normalize(torch.randn(dim, 2, generator=torch.Generator().manual_seed(0)), dim=0)
    model = SDPModel(gpu.clip.visual, text, size).eval()
    ref_model = SDPModel(cpu.clip.visual, text, size).eval()

    x_cpu = torch.randint(0, 256, (4, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref_map, ref_prob = ref_model(x_cpu)
        x = x_cpu.to(dev)
        res["parity_vs_cpu_fp32"] = {"cuda_fp32_default_flags": parity(ref_map, ref_prob, *model(x))}
        if dev == "cuda":
            res["parity_vs_cpu_fp32"]["cuda_fp16_autocast"] = parity(ref_map, ref_prob, *model.forward_fp16(x))
    print("parity:", json.dumps(res["parity_vs_cpu_fp32"]), flush=True)

    res["matmul_ceiling_tflops"] = {"fp16": round(matmul_ceiling(torch.float16), 3),
                                    "bf16": round(matmul_ceiling(torch.bfloat16), 3)}
    torch.backends.cuda.matmul.allow_tf32 = True
    res["matmul_ceiling_tflops"]["fp32_tf32"] = round(matmul_ceiling(torch.float32), 3)
    torch.backends.cuda.matmul.allow_tf32 = False
    res["matmul_ceiling_tflops"]["fp32"] = round(matmul_ceiling(torch.float32), 3)
    print("ceiling:", res["matmul_ceiling_tflops"], flush=True)

    from clipad_export.preprocess import normalize

    one = torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8, device=dev)
    with torch.no_grad():
        res["flops_per_image"] = {
            "sdp": flops(lambda: model(one)),
            "plain_encode_image": flops(lambda: gpu.clip.encode_image(normalize(one))),
        }
    print("flops:", res["flops_per_image"], flush=True)

    timings = []
    for precision in ("fp32", "fp16") if dev == "cuda" else ("fp32",):
        for batch in BATCHES:
            xb = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=dev)
            xn = normalize(xb)
            iters = {1: 50, 8: 30, 32: 15}.get(batch, 5)
            if precision == "fp32":
                sdp_fn = lambda: model(xb)  # noqa: E731
                def plain_fn():
                    return gpu.clip.encode_image(xn)
            else:
                sdp_fn = lambda: model.forward_fp16(xb)  # noqa: E731
                def plain_fn():
                    with torch.autocast("cuda", dtype=torch.float16):
                        return gpu.clip.encode_image(xn)
            with torch.no_grad():
                if dev == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                s = stats(cuda_times(sdp_fn, 5, iters), batch)
                s["peak_gpu_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1) if dev == "cuda" else None
                plain = stats(cuda_times(plain_fn, 5, iters), batch)
            ceiling = res["matmul_ceiling_tflops"]["fp16" if precision == "fp16" else "fp32"]
            achieved = res["flops_per_image"]["sdp"] * s["images_per_s"] / 1e12
            row = {"precision": precision, "batch": batch, **s, "plain_p50_ms": plain["p50_ms"],
                   "dual_path_over_plain": round(s["p50_ms"] / plain["p50_ms"], 2),
                   "achieved_tflops": round(achieved, 3), "fraction_of_matmul_ceiling": round(achieved / ceiling, 4)}
            timings.append(row)
            print("bench:", row, flush=True)
    res["timings"] = timings
    (args.out / "gpu_check.json").write_text(json.dumps(res, indent=2) + "\n")

    md = [f"GPU check {res['date']}: {res['gpu']}, torch {res['torch']} (CUDA {res['cuda']}), {MODEL}, random weights", ""]
    md.append("| precision | batch | p50 ms | p90 ms | p99 ms | images/s | peak GPU MiB | plain encode p50 ms | dual/plain | TFLOP/s | of matmul ceiling |")
    md.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in timings:
        md.append(f"| {r['precision']} | {r['batch']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['images_per_s']} | "
                  f"{r['peak_gpu_mem_mib']} | {r['plain_p50_ms']} | {r['dual_path_over_plain']} | {r['achieved_tflops']} | "
                  f"{100 * r['fraction_of_matmul_ceiling']:.1f}% |")
    (args.out / "gpu_check.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0 if res.get("tests", {}).get("returncode", 0) in (0, 5) else 1


if __name__ == "__main__":
    sys.exit(main())
