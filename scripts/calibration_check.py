"""Calibration figures, in one run on this machine, for one model:

- good-only calibration at several target false-positive rates: the rate achieved on the
  calibration images and on held-out good images (the runtime's labels via `clipad predict`);
- the INT8 graph (`clipad calibrate --int8`) against FP32 on ONNX Runtime CPU: seconds per
  batch at batch 1 and 8 (rounds interleaved, median quoted), anomaly_map relative L2 error,
  image_prob error and top-1% pixel agreement.

    python scripts/calibration_check.py --out /tmp/cal_check [--model clipad-tiny] [--n-cal 200] [--n-held 200]

Random weights (nothing can be downloaded here): the figures describe the toolchain, not
detection quality.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from clipad import cli
from clipad.data.images import read_model_images
from clipad.data.synth import make_synthetic
from clipad.deploy.artifacts import load_artifacts
from clipad.deploy.parity import compare
from clipad.runtime.backends import open_backend


def clipad(*args) -> None:
    code = cli.run([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"clipad {' '.join(map(str, args))} failed ({code})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", default="clipad-tiny")
    ap.add_argument("--n-cal", type=int, default=200)
    ap.add_argument("--n-held", type=int, default=200)
    ap.add_argument("--int8-images", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--artifacts", type=Path, help="reuse this export (copied) instead of exporting --model")
    args = ap.parse_args()
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    make_synthetic(out / "s", n_train=args.n_cal + args.n_held, n_good=4, n_defect=4, seed=3)
    good = sorted((out / "s" / "fabric" / "train" / "good").iterdir())
    for name, files in (("cal", good[: args.n_cal]), ("held", good[args.n_cal :])):
        (out / name).mkdir()
        for f in files:
            shutil.copy(f, out / name / f.name)
    art_dir = out / "art"
    t0 = time.perf_counter()
    if args.artifacts:
        shutil.copytree(args.artifacts, art_dir)
        args.model = load_artifacts(art_dir).manifest.model
    else:
        clipad(
            "export",
            "--category",
            "fabric",
            "--precision",
            "fp32",
            "--out",
            art_dir,
            "--model",
            args.model,
            "--random-weights",
            "--quiet",
        )
    res: dict = {
        "model": args.model,
        "export_s": round(time.perf_counter() - t0, 1),
        "n_cal": args.n_cal,
        "n_held": args.n_held,
        "fpr": [],
    }
    for target in (0.01, 0.05, 0.1) if args.n_cal else ():  # --n-cal 0: INT8 figures only
        clipad(
            "calibrate",
            "--artifacts",
            art_dir,
            "--good",
            out / "cal",
            "--target-fpr",
            target,
            "--backend",
            "onnxruntime",
            "--quiet",
        )
        c = load_artifacts(art_dir).manifest.calibration
        clipad(
            "predict", out / "held", "--artifacts", art_dir, "--out", out / "p", "--backend", "onnxruntime", "--quiet"
        )
        recs = [json.loads(line) for line in (out / "p" / "predictions.jsonl").read_text().splitlines()]
        held = float(np.mean([r["label"] == "anomalous" for r in recs]))
        sd = float(np.sqrt(target * (1 - target) * (1 / args.n_cal + 1 / args.n_held)))
        res["fpr"].append(
            {
                "target": target,
                "calibration": c.achieved["fpr"],
                "held_out": held,
                "binomial_sd": round(sd, 4),
                "pixel_fpr_calibration": c.achieved["pixel_fpr"],
            }
        )
        print(res["fpr"][-1], flush=True)

    t0 = time.perf_counter()
    int8_src = out / "cal" if args.n_cal else out / "held"
    clipad(
        "calibrate",
        "--artifacts",
        art_dir,
        "--int8",
        "--images",
        int8_src,
        "--int8-max-images",
        args.int8_images,
        "--min-agreement",
        0.0,
        "--quiet",
    )
    res["int8_quantise_s"] = round(time.perf_counter() - t0, 1)
    art = load_artifacts(art_dir)
    res["int8_parity_in_manifest"] = art.manifest.parity.figures("int8").model_dump()
    # the last 16 held-out images: never among the INT8 calibration images (the first ones with --n-cal 0)
    x = read_model_images(out / "held", art.geometry)[-16:]
    fp32, int8 = open_backend(art, "onnxruntime", "fp32", "cpu"), open_backend(art, "onnxruntime", "int8", "cpu")
    ref, q = fp32(x), int8(x)
    res["int8_vs_fp32_held_out_16"] = compare(ref, q, "onnxruntime fp32").values()
    times: dict = {}
    for batch in (1, 8):
        xb = x[:batch]
        for be in (fp32, int8):
            be(xb)  # warm-up
        for _ in range(args.rounds):  # interleaved, so that machine noise hits both alike
            for name, be in (("fp32", fp32), ("int8", int8)):
                t = time.perf_counter()
                be(xb)
                times.setdefault((name, batch), []).append(time.perf_counter() - t)
    res["seconds_per_batch"] = {f"{n} batch {b}": round(statistics.median(v), 5) for (n, b), v in times.items()}
    res["int8_over_fp32"] = {
        f"batch {b}": round(statistics.median(times[("int8", b)]) / statistics.median(times[("fp32", b)]), 3)
        for b in (1, 8)
    }
    print(json.dumps(res, indent=2))
    (out / "calibration_check.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
