"""GPU check: the CUDA tests, then `clipad export` and `clipad bench` on the GPU, in one command.

One command for a machine with a CUDA GPU (minutes, not hours):

    python3 scripts/gpu_check.py --out DIR           # ViT-B-16-plus-240, random weights
    python3 scripts/gpu_check.py --out DIR --dry-run # checks this script on a CPU with clipad-tiny

Steps, each logged under DIR:
0. `clipad doctor --json --deep` (recorded whole in gpu_check.json; it decides which backends run)
   -> DIR/doctor.log;
1. pytest on the GPU tests (tests/test_gpu.py; tests/test_engine.py, which runs where TensorRT
   is installed) -> DIR/pytest_gpu.log;
2. `clipad export` of ViT-B-16-plus-240 with random weights (timings and numerics do not depend on
   the weights' values), FP32 and FP16 graphs, max batch 32, plus a TensorRT engine where
   TensorRT imports -> DIR/artifacts, DIR/export.log;
3. `clipad bench` on CUDA: the torch backend in FP32 and FP16 (autocast), plus onnxruntime when its
   CUDA provider really loads and tensorrt when the doctor finds it usable, at batch 1/8/32: latency
   p50/p90/p99, throughput, start-up, memory, parity against the CPU FP32 reference, FLOP/s and
   the fraction of the measured matmul ceiling, the dual path over a plain encoding
   -> DIR/bench.md (the table), DIR/bench.json, DIR/bench.png;
4. DIR/gpu_check.json: what ran, exit codes, seconds, GPU and versions; DIR/gpu_check.md.

The dry run does the same on the CPU with clipad-tiny (torch and onnxruntime, batch 1/2).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_TESTS = ("tests/test_gpu.py", "tests/test_engine.py")


def step(cmd: list[str], log: Path) -> tuple[dict, str]:
    """Run ``cmd`` in the repository root, stdout+stderr to ``log``; (exit code and seconds, stdout)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
    res = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), "log": log.name}
    print(f"{log.stem}: exit {proc.returncode} in {res['seconds']} s", flush=True)
    return res, proc.stdout


def doctor(out: Path) -> dict:
    """`clipad doctor --json --deep`: packages, GPU, driver and what each backend can do ({} if it failed)."""
    _, text = step([sys.executable, "-m", "clipad", "doctor", "--json", "--deep"], out / "doctor.log")
    try:
        return json.loads(text)
    except ValueError:
        return {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="check this script on a CPU with the tiny model")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    doc = doctor(out)
    checks = doc.get("checks", {})
    session = doc.get("facts", {}).get("onnxruntime", {}).get("gpu_session") or []
    if args.dry_run:
        model, batches, device, iterations, warmup = "clipad-tiny", "1,2", "cpu", 5, 1
        backends = ["torch", "onnxruntime"]
    elif not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA GPU", file=sys.stderr)
        return 1
    else:
        model, batches, device, iterations, warmup = "ViT-B-16-plus-240", "1,8,32", "cuda", 30, 5
        backends = (
            ["torch"]
            + (["onnxruntime"] if session[:1] == ["CUDAExecutionProvider"] else [])
            + (["tensorrt"] if checks.get("tensorrt", {}).get("usable") else [])
        )
    clipad = [sys.executable, "-m", "clipad"]
    res: dict = {
        "date": time.strftime("%Y-%m-%d"),
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "none (dry run)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "model": model,
        "weights": "random (timings and numerics do not depend on weight values)",
        "backends": backends,
        "doctor": doc,
    }
    if not args.skip_tests:
        res["tests"], _ = step([sys.executable, "-m", "pytest", "-q", "-rs", *GPU_TESTS], out / "pytest_gpu.log")

    art = out / "artifacts"
    export = [
        *clipad,
        "export",
        "--category",
        "bench",
        "--model",
        model,
        "--random-weights",
        "--precision",
        "all",
        "--max-batch",
        batches.split(",")[-1],
        "--out",
        str(art),
        "--quiet",
    ]
    if "tensorrt" in backends:
        res["export"], _ = step([*export, "--engine"], out / "export.log")
        if res["export"]["returncode"] != 0:  # bench the ONNX graphs even when the engine does not build
            res["export_with_engine"] = res["export"]
            res["export"], _ = step(export, out / "export.log")
    else:
        res["export"], _ = step(export, out / "export.log")

    if res["export"]["returncode"] == 0:
        bench = [
            *clipad,
            "bench",
            "--artifacts",
            str(art),
            "--backends",
            ",".join(backends),
            "--precision",
            "fp32,fp16",
            "--batch",
            batches,
            "--iterations",
            str(iterations),
            "--warmup",
            str(warmup),
            "--device",
            device,
            "--json",
            str(out / "bench.json"),
            "--plot",
            str(out / "bench.png"),
            "--quiet",
        ]
        res["bench"], table = step(bench, out / "bench.log")
        (out / "bench.md").write_text(table)
        print(table, flush=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2) + "\n")
    head = f"GPU check {res['date']}: {res['gpu']}, torch {res['torch']} (CUDA {res['cuda']}), {model}, random weights"
    (out / "gpu_check.md").write_text(
        head + "\n\n" + ((out / "bench.md").read_text() if "bench" in res else "bench not run") + "\n"
    )
    codes = [
        res.get("tests", {}).get("returncode", 0) in (0, 5),
        res["export"]["returncode"] == 0,
        res.get("bench", {}).get("returncode", 1) == 0,
    ]
    return 0 if all(codes) else 1


if __name__ == "__main__":
    sys.exit(main())
