"""Runtime figures for one artifact directory, in one run on this machine:

- pipeline efficiency: frames per second of `clipad run`'s pipeline over a video file against
  the bare backend on the same (pre-decoded, pre-resized) frames at the same batch size;
- soak: a live source (a video read in a loop by the grabber thread) for N frames: RSS growth
  after warm-up, dropped frames, and the oldest inferred frame against one inference period.

Per-backend latency and throughput are `clipad bench`'s job (it replaced this script's
seconds-per-frame section and scripts/export_check.py).

    python scripts/runtime_check.py --artifacts artifacts/washer [--frames 200] [--soak 10000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from clipad.core.memory import rss_mb
from clipad.data.images import resize_to_model
from clipad.data.synth import sample_images
from clipad.deploy.artifacts import load_artifacts
from clipad.runtime.backends import open_backend
from clipad.runtime.pipeline import Pipeline
from clipad.runtime.sources import LiveSource, VideoFileSource


class Collect:
    def __init__(self):
        self.records = []

    def write(self, result):
        self.records.append(result.record)

    def close(self):
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=Path, required=True)
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--soak", type=int, default=0)
    args = ap.parse_args()
    art = load_artifacts(args.artifacts)
    be = open_backend(art, args.backend, "fp32", "cpu")
    tmp = Path(tempfile.mkdtemp())
    video = tmp / "v.avi"
    images = sample_images(min(args.frames, 60), width=320, height=240)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for i in range(args.frames):
        writer.write(cv2.cvtColor(images[i % len(images)], cv2.COLOR_RGB2BGR))
    writer.release()
    res: dict = {
        "artifacts": str(args.artifacts),
        "model": art.manifest.model,
        "backend": be.describe(),
        "max_batch": be.max_batch,
        "frames": args.frames,
    }

    # bare backend on the same frames, pre-decoded and pre-resized
    src = VideoFileSource(str(video))
    frames = []
    while (f := src.read()) is not None:
        frames.append(resize_to_model(f.image, art.geometry))
    batch = np.stack(frames)
    be(batch[: be.max_batch])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, len(batch), be.max_batch):
        be(batch[i : i + be.max_batch])
    bare = len(batch) / (time.perf_counter() - t0)
    pipe = Pipeline(
        be, [VideoFileSource(str(video))], art.geometry, None, [Collect()], status_every=1e9, log=lambda s: None
    )
    summary = pipe.run()
    res["bare_backend_fps"] = round(bare, 2)
    res["pipeline_fps"] = round(summary.fps, 2)
    res["pipeline_efficiency"] = round(summary.fps / bare, 3)
    res["seconds_per_frame_bare"] = round(1 / bare, 4)
    print(json.dumps(res), flush=True)

    if args.soak:
        live = LiveSource(str(video), name="loop")
        sink = Collect()
        samples = []
        pipe = Pipeline(
            be, [live], art.geometry, None, [sink], max_frames=args.soak, status_every=1e9, log=lambda s: None
        )
        stop = threading.Event()

        def sample():
            while not stop.wait(1.0):
                samples.append((pipe.summary.frames, rss_mb()))

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        s = pipe.run()
        stop.set()
        th.join()
        warm = [r for n, r in samples if n >= min(1000, args.soak // 10)]
        inf_p99 = float(np.percentile(s.latency_ms["inference"], 99))
        res["soak"] = {
            "frames": s.frames,
            "seconds": round(s.seconds, 1),
            "fps": round(s.fps, 1),
            "rss_mb_after_warmup": round(warm[0], 1) if warm else None,
            "rss_mb_end": round(rss_mb(), 1),
            "rss_growth_mb": round(rss_mb() - warm[0], 1) if warm else None,
            "dropped": s.dropped,
            "reconnects": s.reconnects,
            "max_latency_ms": round(max(r.latency_ms for r in sink.records), 2),
            "max_frame_age_at_inference_ms": round(max(s.frame_age_ms), 2),
            "p99_frame_age_at_inference_ms": round(float(np.percentile(s.frame_age_ms, 99)), 2),
            "inference_p99_ms": round(inf_p99, 2),
            "source_frames_per_s": round((s.dropped + s.frames) / s.seconds, 1),
        }
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
