"""TensorRT check: FP16 and INT8 engines, parity, the engine tests and bench, in one command.

For whoever has TensorRT, cuda-python and an NVIDIA GPU (a factory workstation, a CI runner with a
GPU); TensorRT cannot be installed where clipad is developed, so this is where its engine path runs:

    python3 scripts/tensorrt_check.py --out DIR             # clipad-tiny and ViT-B-16-plus-240, random weights
    python3 scripts/tensorrt_check.py --out DIR --models clipad-tiny
    python3 scripts/tensorrt_check.py --out DIR --pretrained laion400m_e31   # real ViT weights (download)
    python3 scripts/tensorrt_check.py --out DIR --dry-run   # no GPU, no TensorRT: clipad-tiny, the rest

First `clipad doctor --json --deep` (recorded whole in the report: the packages, the GPU and
driver, and why a backend cannot work). Then per model, each step logged under DIR/<model>/:
1. `clipad export --engine` (FP32 + mixed FP16 graphs, the FP16 engine built strongly typed from
   model.fp16.onnx; FP32 from model.onnx when the FP16 graph missed its parity limits, which
   random ViT weights usually make it do) -> fp16/;
2. the TensorRT ONNX-parser check (``unsupported_ops``) on model.onnx and model.fp16.onnx;
3. `clipad export --precision fp32`, `clipad calibrate --int8 --min-agreement 0.0` on synthetic
   images (random weights cannot pass the 0.9 gate; the engine path is what is checked), the
   parser check on model.int8.onnx, then `clipad export --engine --precision int8` -> int8/;
4. `clipad parity --backends tensorrt,onnxruntime` on both directories (onnxruntime on the GPU when
   onnxruntime-gpu is installed);
5. `clipad bench` for tensorrt and onnxruntime: fp32,fp16 on fp16/, int8 on int8/.
Then the engine tests (tests/test_engine.py, tests/test_tensorrt_build.py), and one report:
DIR/tensorrt_check.json and DIR/tensorrt_check.md (every step: ok / failed / skipped: reason).

The dry run does everything that needs no TensorRT with clipad-tiny on the CPU (export,
INT8 calibration, the parser check on all three graphs, parity and bench on ONNX Runtime CPU,
tests/test_tensorrt_build.py) and records each TensorRT step as "skipped: <reason>".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"clipad-tiny": "8", "ViT-B-16-plus-240": "32"}  # model -> max batch
BATCHES = {"clipad-tiny": "1,8", "ViT-B-16-plus-240": "1,8,32"}
OPCHECK = (
    "import json, sys\n"
    "from clipad.deploy.tensorrt.parser_check import unsupported_ops\n"
    "r = {f: unsupported_ops(f) for f in sys.argv[1:]}\n"
    "print(json.dumps(r, indent=2))\n"
    "sys.exit(1 if any(r.values()) else 0)\n"
)


class Run:
    """The steps of one check and their results, in order."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.steps: list[dict] = []

    def step(self, name: str, cmd: list, log: Path, ok_codes=(0,)) -> dict:
        """Run ``cmd`` in the repository root, stdout+stderr to ``log``."""
        cmd = [str(c) for c in cmd]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
        status = "ok" if proc.returncode in ok_codes else "failed"
        last = next((line for line in reversed((proc.stderr or proc.stdout).splitlines()) if line.strip()), "")
        res = {
            "step": name,
            "status": status,
            "returncode": proc.returncode,
            "seconds": round(time.perf_counter() - t0, 1),
            "log": str(log.relative_to(self.out)),
            "stdout": proc.stdout,
            **({"last_line": last} if status != "ok" else {}),
        }
        self.steps.append(res)
        print(f"{name}: {status} (exit {proc.returncode}) in {res['seconds']} s", flush=True)
        return res

    def skip(self, name: str, reason: str) -> dict:
        res = {"step": name, "status": f"skipped: {reason}"}
        self.steps.append(res)
        print(f"{name}: skipped: {reason}", flush=True)
        return res


def doctor(run: Run) -> dict:
    """`clipad doctor --json --deep` (torch imported too): the machine, its packages and what each
    backend can do, as recorded in the report; {} when the doctor itself failed."""
    res = run.step(
        "clipad doctor --json --deep",
        [sys.executable, "-m", "clipad", "doctor", "--json", "--deep"],
        run.out / "doctor.log",
    )
    try:
        return json.loads(res["stdout"])
    except ValueError:
        return {}


def tensorrt_missing(doc: dict) -> str | None:
    """Why TensorRT engines cannot be built and served here (None: they can), from the doctor."""
    check = doc.get("checks", {}).get("tensorrt")
    if check is None:
        return "clipad doctor gave no answer (see doctor.log)"
    return None if check["usable"] else check["detail"]


def onnxruntime_on_gpu(doc: dict) -> bool:
    """Whether a real ONNX Runtime session got the CUDA provider (the doctor opened one)."""
    session = doc.get("facts", {}).get("onnxruntime", {}).get("gpu_session") or []
    return bool(session) and session[0] == "CUDAExecutionProvider"


def check_model(run: Run, model: str, args, trt_reason: str | None, ort_gpu: bool, images: Path) -> dict:
    """Steps 1-5 for one model; returns where its artifacts are."""
    d = run.out / model
    clipad = [sys.executable, "-m", "clipad"]
    weights = (
        ["--random-weights"]
        if model == "clipad-tiny" or not (args.pretrained or args.weights)
        else (["--pretrained", args.pretrained] if args.pretrained else ["--weights", args.weights])
    )
    common = ["--category", "trtcheck", "--model", model, *weights, "--max-batch", MODELS[model], "--quiet"]
    trt = trt_reason is None
    device = "cuda" if trt else "cpu"
    fp16_dir, int8_dir = d / "fp16", d / "int8"

    # 1-2: FP32 + FP16 graphs and the FP16 engine
    export = [*clipad, "export", *common, "--precision", "all", "--out", fp16_dir]
    res = run.step(
        f"{model}: export + FP16 engine" if trt else f"{model}: export",
        [*export, *(["--engine"] if trt else [])],
        d / "export_fp16.log",
    )
    if not trt:
        run.skip(f"{model}: FP16 engine build", trt_reason)
    elif res["status"] != "ok":  # keep checking the ONNX graphs without the engine
        run.step(f"{model}: export (no engine, after the engine failed)", export, d / "export_fp16_no_engine.log")
    graphs = [fp16_dir / g for g in ("model.onnx", "model.fp16.onnx") if (fp16_dir / g).is_file()]
    if graphs:
        run.step(
            f"{model}: TensorRT parser check (FP32, FP16 graphs)",
            [sys.executable, "-c", OPCHECK, *graphs],
            d / "opcheck_fp16.log",
        )
    if not (fp16_dir / "model.fp16.onnx").is_file() and (fp16_dir / "manifest.json").is_file():
        run.skip(
            f"{model}: FP16 graph",
            "the FP16 graph missed its parity limits and was dropped (random weights usually "
            "make it do so); the engine in fp16/ is FP32",
        )

    # 3: the INT8 graph and its engine
    run.step(
        f"{model}: export (FP32 graph for INT8)",
        [*clipad, "export", *common, "--precision", "fp32", "--out", int8_dir],
        d / "export_int8_source.log",
    )
    cal = run.step(
        f"{model}: calibrate --int8",
        [
            *clipad,
            "calibrate",
            "--artifacts",
            int8_dir,
            "--int8",
            "--images",
            images,
            "--min-agreement",
            "0.0",
            "--quiet",
        ],
        d / "calibrate_int8.log",
    )
    if cal["status"] == "ok":
        run.step(
            f"{model}: TensorRT parser check (INT8 QDQ graph)",
            [sys.executable, "-c", OPCHECK, int8_dir / "model.int8.onnx"],
            d / "opcheck_int8.log",
        )
    if trt:
        run.step(
            f"{model}: INT8 engine build",
            [*clipad, "export", "--category", "trtcheck", "--engine", "--precision", "int8", "--out", int8_dir],
            d / "engine_int8.log",
        )
    else:
        run.skip(f"{model}: INT8 engine build", trt_reason)

    # 4-5: parity and bench, TensorRT against ONNX Runtime
    backends = (["tensorrt"] if trt else []) + (["onnxruntime"] if (ort_gpu or not trt) else [])
    if trt and not ort_gpu:
        run.skip(f"{model}: onnxruntime-gpu", "onnxruntime has no CUDA/TensorRT execution provider here")
    if not trt:
        run.skip(f"{model}: parity/bench of the tensorrt backend", trt_reason)
    iterations, warmup = ("30", "5") if trt else ("3", "1")
    batches = BATCHES[model] if trt else "1,2"
    for label, art, precisions in (("fp16/", fp16_dir, "fp32,fp16"), ("int8/", int8_dir, "int8")):
        if not (art / "manifest.json").is_file():
            run.skip(f"{model}: parity + bench on {label}", "no artifacts (an earlier step failed)")
            continue
        run.step(
            f"{model}: parity on {label} ({','.join(backends)}, {device})",
            [
                *clipad,
                "parity",
                "--artifacts",
                art,
                "--backends",
                ",".join(backends),
                "--device",
                device,
                "--json",
                d / f"parity_{label[:-1]}.json",
            ],
            d / f"parity_{label[:-1]}.log",
            ok_codes=(0, 1),
        )
        run.step(
            f"{model}: bench on {label} ({','.join(backends)}, {precisions}, {device})",
            [
                *clipad,
                "bench",
                "--artifacts",
                art,
                "--backends",
                ",".join(backends),
                "--precision",
                precisions,
                "--batch",
                batches,
                "--iterations",
                iterations,
                "--warmup",
                warmup,
                "--device",
                device,
                "--no-parity",
                "--json",
                d / f"bench_{label[:-1]}.json",
                "--quiet",
            ],
            d / f"bench_{label[:-1]}.log",
        )
    return {"fp16": str(fp16_dir), "int8": str(int8_dir)}


def report(run: Run, res: dict) -> str:
    doc = res["doctor"]
    checks = doc.get("checks", {})
    machine = (
        "; ".join(
            f"{k}: {'yes' if v['usable'] else 'no' if v['usable'] is False else '?'} ({v['detail']})"
            for k, v in checks.items()
        )
        or "clipad doctor gave no answer"
    )
    machine += f"; weights: {res['weights']}"
    lines = [
        f"# TensorRT check {res['date']}{' (dry run)' if res['dry_run'] else ''}",
        "",
        machine,
        "",
        "| step | status | s |",
        "|---|---|---|",
    ]
    for s in run.steps:
        detail = f" ({s['last_line'][:160]})" if s.get("last_line") else ""
        lines.append(f"| {s['step']} | {s['status']}{detail} | {s.get('seconds', '')} |")
    for s in run.steps:
        text = s.get("stdout", "").strip()
        if not text or not any(k in s["step"] for k in ("parser check", "parity on", "bench on")):
            continue
        body = [text] if "bench on" in s["step"] else ["```", text, "```"]  # bench prints a markdown table
        lines += ["", f"## {s['step']}", "", *body]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--pretrained", help="open_clip tag for ViT-B-16-plus-240 (downloads; default: random weights)")
    ap.add_argument("--weights", help="offline state dict for ViT-B-16-plus-240 (default: random weights)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument(
        "--dry-run", action="store_true", help="no GPU, no TensorRT: clipad-tiny, every step that needs neither"
    )
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out)
    doc = doctor(run)
    reason = tensorrt_missing(doc)
    if args.dry_run:
        models = ["clipad-tiny"]
        trt_reason = "dry run" + (f": {reason}" if reason else " (TensorRT not used)")
    else:
        if reason:
            print(f"tensorrt_check: {reason}; use --dry-run to check everything else", file=sys.stderr)
            return 1
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            print(f"tensorrt_check: unknown model {unknown[0]} (one of {', '.join(MODELS)})", file=sys.stderr)
            return 1
        trt_reason = None
    ort_gpu = onnxruntime_on_gpu(doc)
    res: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "dry_run": args.dry_run,
        "models": models,
        "doctor": doc,
        "machine": platform.platform(),
        "weights": "; ".join(
            f"{m}: {'random' if m == 'clipad-tiny' else args.pretrained or args.weights or 'random'}" for m in models
        ),
    }

    images = out / "synth"
    run.step(
        "synthetic calibration images",
        [sys.executable, "-m", "clipad", "synth", "--out", images, "--n-good", "16", "--n-defect", "1", "--force"],
        out / "synth.log",
    )
    cal_images = images / "washer" / "test" / "good"
    for model in models:
        res.setdefault("artifacts", {})[model] = check_model(
            run, model, args, trt_reason, ort_gpu and not args.dry_run, cal_images
        )
    if args.skip_tests:
        run.skip("engine tests", "--skip-tests")
    elif importlib.util.find_spec("pytest") is None:
        run.skip(
            "engine tests",
            "pytest is not installed (the gpu extra installs it: "
            "pip install --extra-index-url https://pypi.nvidia.com -e '.[gpu]')",
        )
    else:
        tests = ["tests/test_tensorrt_build.py", "tests/test_engine.py"]
        run.step(
            "engine tests (pytest " + " ".join(tests) + ")",
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests],
            out / "pytest_engine.log",
        )
        if trt_reason:
            run.skip("tests/test_engine.py (builds and serves engines)", trt_reason)
    res["steps"] = [{k: v for k, v in s.items() if k != "stdout"} for s in run.steps]
    for name in ("parity", "bench"):
        res[name] = {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.glob(f"*/{name}_*.json"))}
    (out / "tensorrt_check.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / "tensorrt_check.md").write_text(report(run, res))
    print(f"report: {out / 'tensorrt_check.md'}, {out / 'tensorrt_check.json'}")
    return 1 if any(s["status"] == "failed" for s in run.steps) else 0


if __name__ == "__main__":
    sys.exit(main())
