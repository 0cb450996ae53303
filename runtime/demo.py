"""`clipad demo`: a fully offline run on a new machine, from nothing to heatmaps.

Synthesises a small dataset and a short video, exports a model with random weights, streams the
video through the runtime, scores the dataset's test images, and writes everything plus a short
report into one folder. Random weights make the heatmaps meaningless: the demo shows that the
toolchain works here, not that it detects anything.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2

from clipad.calibration.calibrate import calibrate
from clipad.core.progress import Tasks
from clipad.data.colour import to_bgr
from clipad.data.synth import make_synthetic, sample_images
from clipad.deploy.export import ExportConfig, export
from clipad.model.loading import TINY_MODEL, WeightSpec, load_model
from clipad.model.prompts import PROMPT_SETS
from clipad.runtime.backends import select_backend
from clipad.runtime.pipeline import Pipeline
from clipad.runtime.predict import predict
from clipad.runtime.scoring import Calibration
from clipad.runtime.sinks import EventsSink, VideoSink
from clipad.runtime.sources import VideoFileSource

CATEGORY = "washer"


def write_demo_video(path: Path, frames: int, fps: float = 10.0) -> None:
    images = sample_images(min(frames, 16), width=320, height=240, seed=7)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 240))
    for i in range(frames):
        writer.write(to_bgr(images[i % len(images)]))
    writer.release()


def run_demo(
    out: Path, model: str = TINY_MODEL, frames: int = 40, tasks: Tasks | None = None, log=lambda s: None
) -> dict:
    """Run the whole demo into ``out``; returns what the report says."""
    tasks = tasks or Tasks(None)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    make_synthetic(data, n_train=20, n_good=3, n_defect=2, force=True)
    log(f"synthetic dataset: {data}")
    video = out / "input.avi"
    write_demo_video(video, frames)
    log(f"input video: {video} ({frames} frames)")
    loaded = load_model(WeightSpec(model=model, random_weights=True, seed=0), "cpu")
    art = export(
        loaded,
        ExportConfig(
            category=CATEGORY,
            out=out / "artifacts" / CATEGORY,
            prompts=PROMPT_SETS["industrial"],
            max_batch=8,
            precision="all",
        ),
        tasks,
    )
    log(f"artifacts: {art.root}")
    backend = select_backend(art, "auto", "cpu")
    good = data / CATEGORY / "train" / "good"
    calibrate(art, backend, str(good), tasks, target_fpr=0.1)
    cal = Calibration.from_manifest(art.manifest)
    log(f"calibrated on {good} (20 good images, false-positive rate 0.1)")
    sinks = [EventsSink(out / "events.jsonl"), VideoSink(out / "overlay.mp4")]
    summary = Pipeline(
        backend,
        [VideoFileSource(str(video))],
        art.image_size,
        cal,
        sinks,
        status_every=1e9,
        log=lambda s: None,
        needs_view=True,
    ).run()
    log(f"runtime: {summary.line()}")
    preds = predict(
        backend, str(data / CATEGORY / "test"), out / "predictions", art.image_size, cal, tasks, save_overlays=True
    )
    report = {
        "model": model,
        "weights": "random (seed 0): the heatmaps and scores are meaningless",
        "backend": backend.describe(),
        "parity": {
            p: {k: getattr(f, k) for k in ("rel_l2", "prob_max_abs", "top1pct_agreement")}
            for p in ("fp32", "fp16")
            if (f := art.manifest.parity.figures(p)) is not None
        },
        "precisions_kept": list(art.manifest.precisions),
        "runtime": {"frames": summary.frames, "fps": round(summary.fps, 1), "summary": summary.line()},
        "predictions": preds.images,
        "labelled_anomalous": sum(
            json.loads(line)["label"] == "anomalous"
            for line in (out / "predictions" / "predictions.jsonl").read_text().splitlines()
        ),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report, out))
    return report


def _markdown(r: dict, out: Path) -> str:
    par = "\n".join(
        f"  - {p}: anomaly_map rel. L2 {v['rel_l2']:.1e}, image_prob error {v['prob_max_abs']:.1e}, "
        f"top-1% agreement {v['top1pct_agreement']:.3f}"
        for p, v in r["parity"].items()
    )
    return f"""# clipad demo

**Random weights: the heatmaps and scores below are meaningless.** This run shows that the
toolchain works on this machine: synthesis, export with parity, calibration, streaming, prediction.

- model: {r["model"]}, backend: {r["backend"]}, graphs kept: {", ".join(r["precisions_kept"])}
- export parity against the PyTorch reference:
{par}
- runtime over `input.avi`: {r["runtime"]["summary"]}
- calibration: 20 good images, threshold for a false-positive rate of 0.1
- predictions: {r["predictions"]} images in `predictions/predictions.jsonl` ({r["labelled_anomalous"]} labelled anomalous),
  overlays in `predictions/overlays/`
- total time: {r["seconds"]} s

Files: `{out}/overlay.mp4` (heatmap overlay video), `events.jsonl` (one record per frame),
`artifacts/{CATEGORY}/` (ONNX graphs and manifest), `data/` (the synthetic dataset).

With real weights (an open_clip state dict copied to this machine):

    clipad export --category bottle --weights vit_b16plus_240_laion400m_e31.safetensors
    clipad calibrate --artifacts artifacts/bottle --good good_bottles/
    clipad run --camera 0 --artifacts artifacts/bottle --events events.jsonl --save overlay.mp4
"""
