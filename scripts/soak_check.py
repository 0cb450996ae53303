"""Fault-injection soak of `clipad run`'s pipeline, with an accounting of every frame.

Three live sources (video files read in a loop by grabber threads, as cameras are) feed one
pipeline with the tiny model on ONNX Runtime, while faults are injected on a schedule:

- source "drops": its stream ends every ``--disconnect-s`` seconds (reopened with backoff);
- source "raises": its capture raises every ``--raise-every`` reads (a driver error);
- the snapshot sink's disk is "full" for a window in the middle of the run (writes fail);
- the backend raises once (a transient error, retried) and gives NaN outputs on every
  ``--nan-every``-th call (those frames are recorded as errors).

At the end, for every source: frames grabbed = frames inferred + frames dropped (overwritten
before they were read, or left unread at the stop); and frames inferred = records in the events
file (scored or errors). RSS after warm-up and at the end, and the cost of a status line at the
start and the end, show that memory and per-line work stay flat.

    python scripts/soak_check.py --frames 200000 --out /tmp/soak      # ~10 minutes on 2 cores
    python scripts/soak_check.py --frames 3000 --out /tmp/soak_short  # a quick look

Random weights: the figures are about the runtime, not detection.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

from clipad.calibration.constants import Calibration
from clipad.core.memory import rss_mb
from clipad.core.progress import Tasks
from clipad.data.synth import sample_images
from clipad.deploy.export import ExportConfig, export
from clipad.methods.registry import get_method
from clipad.model.loading import TINY_MODEL, WeightSpec, load_model
from clipad.model.prompts import PROMPT_SETS
from clipad.runtime.backends import open_backend
from clipad.runtime.pipeline import Pipeline
from clipad.runtime.sinks import EventsSink, SnapshotSink
from clipad.runtime.sources import LiveSource


class ScheduledCapture:
    """A real cv2.VideoCapture delivering at most ``fps`` frames a second (as a camera does),
    whose stream ends after ``end_after_s`` seconds, or whose read raises every ``raise_every`` reads."""

    def __init__(self, cap, fps: float, end_after_s: float | None = None, raise_every: int | None = None):
        self.cap, self.period, self.end_after_s, self.raise_every = cap, 1.0 / fps, end_after_s, raise_every
        self.opened, self.reads = time.monotonic(), 0
        self.next_at = self.opened

    def read(self):
        self.next_at += self.period
        wait = self.next_at - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            self.next_at = time.monotonic()
        self.reads += 1
        if self.raise_every and self.reads % self.raise_every == 0:
            raise RuntimeError("injected capture error")
        if self.end_after_s and time.monotonic() - self.opened > self.end_after_s:
            return False, None
        return self.cap.read()

    def release(self):
        self.cap.release()


class FaultySource(LiveSource):
    def __init__(self, path: str, name: str, **faults):
        self.faults = faults
        super().__init__(path, name=name, backoff=(0.05, 0.5))

    def _open(self):
        cap = super()._open()
        return ScheduledCapture(cap, **self.faults) if cap is not None else None


class FaultyBackend:
    """A real backend that raises on one call and gives NaN maps on every ``nan_every``-th call."""

    def __init__(self, inner, raise_on: int, nan_every: int):
        self.inner, self.raise_on, self.nan_every, self.calls = inner, raise_on, nan_every, 0
        self.max_batch, self.name, self.precision, self.notes = (
            inner.max_batch,
            inner.name,
            inner.precision,
            inner.notes,
        )
        self.nan_frames = 0

    def __call__(self, images):
        self.calls += 1
        if self.calls == self.raise_on:
            raise RuntimeError("injected transient backend error")
        amap, prob = self.inner(images)
        if self.calls % self.nan_every == 0:
            amap = amap.copy()
            amap[:, 0, 0] = np.nan
            self.nan_frames += len(amap)
        return amap, prob

    def describe(self):
        return self.inner.describe()

    def close(self):
        self.inner.close()


class FullDiskWindow:
    """Makes cv2.imwrite fail (as on a full disk) between two moments of the run."""

    def __init__(self, start_s: float, end_s: float):
        self.t0, self.start_s, self.end_s, self.real = time.monotonic(), start_s, end_s, cv2.imwrite

    def __call__(self, *args, **kwargs):
        if self.start_s <= time.monotonic() - self.t0 < self.end_s:
            return False
        return self.real(*args, **kwargs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200_000, help="frames to infer (all sources together)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--disconnect-s", type=float, default=20.0)
    ap.add_argument("--raise-every", type=int, default=5000)
    ap.add_argument("--nan-every", type=int, default=997)
    ap.add_argument("--source-fps", type=float, default=150.0, help="frames per second each source delivers")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)

    loaded = load_model(WeightSpec(model=TINY_MODEL, random_weights=True, seed=0))
    art = export(
        loaded,
        ExportConfig(
            category="soak", out=out / "art", prompts=PROMPT_SETS["industrial"], precision="fp32", max_batch=8
        ),
        Tasks(None),
    )
    video = out / "loop.avi"
    frames = sample_images(16, width=160, height=128, seed=5)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (160, 128))
    for i in range(300):
        writer.write(cv2.cvtColor(frames[i % 16], cv2.COLOR_RGB2BGR))
    writer.release()
    # Constants that make a share of frames anomalous, so that snapshots are written.
    backend = open_backend(art, "onnxruntime", "fp32", "cpu")
    sample = np.stack([cv2.resize(f, (art.image_size, art.image_size)) for f in frames])
    amap, prob = backend(sample)
    mmax = amap.reshape(len(amap), -1).max(1)
    cal = Calibration(
        (float(prob.min()), float(prob.max())),
        (float(mmax.min()), float(mmax.max())),
        threshold=1.0,
        score_range=(0.0, 2.0),
        pixel_threshold=float(np.quantile(amap, 0.99)),
        image_score=get_method(art.manifest.mode).image_score,
    )

    import clipad.runtime.sinks as sinks_module

    expected_s = args.frames / 300.0  # rough: the full-disk window sits in the middle of the run
    full_disk = FullDiskWindow(0.3 * expected_s, 0.4 * expected_s)
    sinks_module.cv2.imwrite = full_disk  # the snapshot sink's writes fail in that window
    sources = [
        FaultySource(str(video), "steady", fps=args.source_fps),
        FaultySource(str(video), "drops", fps=args.source_fps, end_after_s=args.disconnect_s),
        FaultySource(str(video), "raises", fps=args.source_fps, raise_every=args.raise_every),
    ]
    faulty = FaultyBackend(backend, raise_on=50, nan_every=args.nan_every)
    events = out / "events.jsonl"
    if events.exists():
        events.unlink()
    snapshots = SnapshotSink(out / "snapshots", cal, interval=0.5)
    log: list[str] = []
    pipe = Pipeline(
        faulty,
        sources,
        art.image_size,
        cal,
        [EventsSink(events), snapshots],
        max_frames=args.frames,
        status_every=30.0,
        log=log.append,
    )

    rss: dict[str, float] = {}
    line_cost: dict[str, float] = {}
    t_start = time.perf_counter()

    def measure(tag: str) -> None:
        rss[tag] = round(rss_mb(), 1)
        t0 = time.perf_counter()
        for _ in range(100):
            pipe.summary.line()
        line_cost[tag] = round((time.perf_counter() - t0) * 10, 4)  # ms per status line

    import threading

    def sampler() -> None:
        warm = min(10_000, args.frames // 10)
        while pipe.summary.frames < warm and not pipe.stop.is_set():
            time.sleep(0.2)
        measure("after warm-up")

    threading.Thread(target=sampler, daemon=True).start()
    summary = pipe.run()
    measure("end")
    seconds = time.perf_counter() - t_start
    sinks_module.cv2.imwrite = full_disk.real

    recorded = Counter()
    labels = Counter()
    for line in events.read_text().splitlines():
        e = json.loads(line)
        recorded[e["source"]] += 1
        labels[e["label"] or "uncalibrated"] += 1
    table = []
    for src in sources:
        grabbed = src.grabbed
        row = {
            "source": src.name,
            "grabbed": grabbed,
            "inferred": src.stats.frames,
            "dropped": src.stats.dropped,
            "in_events": recorded[src.name],
            "lost_streams": src.stats.lost,
            "reconnects": src.stats.reconnects,
        }
        row["grabbed = inferred + dropped"] = grabbed == row["inferred"] + row["dropped"]
        row["inferred = in events"] = row["inferred"] == row["in_events"]
        table.append(row)
    report = {
        "frames": summary.frames,
        "seconds": round(seconds, 1),
        "fps": round(summary.frames / seconds, 1),
        "stopped_by": summary.stopped_by,
        "error": summary.error,
        "errors (label error)": summary.errors,
        "nan frames injected": faulty.nan_frames,
        "backend retries": summary.backend_retries,
        "labels": dict(labels),
        "snapshots": {
            "written": snapshots.written,
            "failed (full disk)": snapshots.failed,
            "rate-limited": snapshots.skipped,
        },
        "accounting": table,
        "rss_mb": rss,
        "status_line_ms": line_cost,
        "rss_growth_mb": round(rss["end"] - rss["after warm-up"], 1) if "after warm-up" in rss else None,
        "log_lines": len(log),
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    ok = all(r["grabbed = inferred + dropped"] and r["inferred = in events"] for r in table) and summary.error is None
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
