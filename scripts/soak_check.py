"""Fault-injection soak of `clipad run`'s pipeline, with an accounting of every frame.

Three live sources (video files read in a loop by grabber threads, as cameras are) feed one
pipeline with the tiny model on ONNX Runtime, while faults are injected on a schedule:

- source "drops": its stream ends every ``--disconnect-s`` seconds (reopened with backoff);
- source "raises": its capture raises every ``--raise-every`` reads (a driver error);
- the snapshot sink's disk is "full" for a window in the middle of the run (writes fail);
- the backend raises once (a transient error, retried) and gives NaN outputs on every
  ``--nan-every``-th call (those frames are recorded as errors);
- two restarts: the frames are served by three runs on the same output folder, the first two
  stopped by SIGTERM; no file an earlier run wrote may change (the events file only grows).

Then three short phases, each its own run:

- stalled sink: the events file is a FIFO whose reader never reads (a share that stopped
  taking writes); SIGTERM must end the run within the pipeline's stall bound, name the sink,
  and leave the overlay video finalised;
- fairness: more live sources than the batch holds; each source's share of the inspected
  frames (the fairness figure: the largest departure from an equal share);
- clock step: the wall clock (``time.time``, which frames are stamped with) is stepped back an
  hour in the middle of the run, as an NTP step does, by replacing ``time.time`` for the whole
  process (the monotonic clock, as in a real step, goes on); the run must go on with every
  frame accounted for, no latency may be negative and snapshots must go on after the step.

For every run and source: frames grabbed = frames inferred + frames dropped (overwritten
before they were read, or left unread at the stop); and frames inferred = records in the events
file (scored or errors). RSS after warm-up and at the end, and the cost of a status line at the
start and the end, show that memory and per-line work stay flat.

    python scripts/soak_check.py --frames 200000 --out /tmp/soak      # ~10 minutes on 2 cores
    python scripts/soak_check.py --frames 3000 --out /tmp/soak_short  # a quick look

Random weights: the figures are about the runtime, not detection.
"""

from __future__ import annotations

import argparse
import builtins
import fcntl
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
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
from clipad.runtime.pipeline import SINK_STALL_S, Pipeline
from clipad.runtime.sinks import EventsSink, SnapshotSink, VideoSink
from clipad.runtime.sources import LiveSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.helpers
from tests.helpers import FillsUp  # noqa: E402


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
    """The disk under the snapshots is full between two moments of the run: the files the sinks
    create (exclusively, mode "x") take half their bytes, then the write fails with ENOSPC.
    Installed as ``open`` of the modules that create those files."""

    def __init__(self, start_s: float, end_s: float):
        self.t0, self.start_s, self.end_s = time.monotonic(), start_s, end_s

    def open(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        full = self.start_s <= time.monotonic() - self.t0 < self.end_s
        return FillsUp(f) if full and "x" in mode else f


class SteppedClock:
    """``time.time`` whose reading jumps by ``step_s`` once ``step`` is called (an NTP step of the
    wall clock; the monotonic clock is untouched, as in a real step)."""

    def __init__(self, real, step_s: float):
        self.real, self.step_s, self.offset = real, step_s, 0.0

    def step(self) -> None:
        self.offset = self.step_s

    def __call__(self) -> float:
        return self.real() + self.offset


def when_frames(pipe: Pipeline, frames: int, action) -> None:
    """Call ``action`` (in a thread) once ``pipe`` has recorded ``frames`` frames."""

    def wait() -> None:
        while pipe.summary.frames < frames and not pipe.stop.is_set():
            time.sleep(0.05)
        if not pipe.stop.is_set():
            action()

    threading.Thread(target=wait, daemon=True).start()


def sigterm() -> None:
    """SIGTERM to this process, as a service manager stops clipad."""
    os.kill(os.getpid(), signal.SIGTERM)


def account(sources: list[LiveSource], recorded: Counter) -> list[dict]:
    """Per source: grabbed = inferred + dropped, and inferred = records in the events file."""
    table = []
    for src in sources:
        row = {
            "source": src.name,
            "grabbed": src.grabbed,
            "inferred": src.stats.frames,
            "dropped": src.stats.dropped,
            "in_events": recorded[src.name],
            "lost_streams": src.stats.lost,
            "reconnects": src.stats.reconnects,
        }
        row["grabbed = inferred + dropped"] = src.grabbed == row["inferred"] + row["dropped"]
        row["inferred = in events"] = row["inferred"] == row["in_events"]
        table.append(row)
    return table


def balanced(table: list[dict], in_events: bool = True) -> bool:
    return all(r["grabbed = inferred + dropped"] and (r["inferred = in events"] or not in_events) for r in table)


def _digest(path: Path, size: int | None = None) -> str:
    """sha256 of the file's first ``size`` bytes (all when None), read in 64 KiB blocks: the
    soak's own checks must not hold whole files (their buffers would count in the RSS figure)."""
    h, left = hashlib.sha256(), size
    with path.open("rb") as f:
        while left is None or left > 0:
            block = f.read(65536 if left is None else min(65536, left))
            if not block:
                break
            h.update(block)
            left = None if left is None else left - len(block)
    return h.hexdigest()


def file_states(root: Path, names: list[str]) -> dict[str, tuple[int, str]]:
    """(size, sha256) of every file under ``root``/``name`` for each of ``names``."""
    states = {}
    for name in names:
        base = root / name
        for p in [base] if base.is_file() else sorted(x for x in base.rglob("*") if x.is_file()):
            states[str(p.relative_to(root))] = (p.stat().st_size, _digest(p))
    return states


def changed(root: Path, before: dict[str, tuple[int, str]], appended: set[str]) -> list[str]:
    """Files of ``before`` that differ now (those in ``appended`` only where their old bytes changed)."""
    out = []
    for name, (size, digest) in before.items():
        p = root / name
        if not p.is_file():
            out.append(f"{name} (deleted)")
            continue
        now = p.stat().st_size
        if name not in appended and now != size:
            out.append(f"{name} (size {size} -> {now})")
        elif now < size or _digest(p, size) != digest:
            out.append(f"{name} (rewritten)")
    return out


def event_sources(lines: Iterable[str]) -> tuple[Counter, Counter, list[float]]:
    """Records per source, per label, and every latency_ms, of events-file lines (read one by one:
    a whole events file held in memory would count in the RSS figure)."""
    recorded: Counter = Counter()
    labels: Counter = Counter()
    latencies = []
    for line in lines:
        e = json.loads(line)
        recorded[e["source"]] += 1
        labels[e["label"] or "uncalibrated"] += 1
        if e["latency_ms"] is not None:
            latencies.append(e["latency_ms"])
    return recorded, labels, latencies


def run_records(events: Path, offset: int) -> tuple[Counter, Counter, int]:
    """Records per source and labels of the events file's lines after ``offset``; the new end."""
    with events.open() as f:
        f.seek(offset)
        recorded, labels, _ = event_sources(f)
        return recorded, labels, f.tell()


def check_and_record_states(root: Path, states: Path, compare: bool) -> list[str]:
    """The files of earlier runs that changed (``compare``: against ``states``), then the states now."""
    modified = []
    if compare:
        before = {k: (int(v[0]), str(v[1])) for k, v in json.loads(states.read_text()).items()}
        modified = changed(root, before, {"events.jsonl"})
    states.write_text(json.dumps(file_states(root, ["events.jsonl", "snapshots"])))
    return modified


def partial_snapshots(folder: Path) -> list[str]:
    """Snapshot files that do not end with PNG's IEND chunk (half-written)."""
    iend = b"IEND\xaeB`\x82"
    out = []
    for p in sorted(folder.glob("*.png")):
        with p.open("rb") as f:
            f.seek(max(p.stat().st_size - len(iend), 0))
            if f.read() != iend:
                out.append(p.name)
    return out


def restart_runs(args, out: Path, backend, image_size: int, cal: Calibration, video: Path, probe: dict) -> dict:
    """The faulty sources served by three runs on one output folder, the first two stopped by
    SIGTERM; every frame of every run accounted for, no file of an earlier run modified."""
    events = out / "events.jsonl"
    events.unlink(missing_ok=True)
    for old in (out / "snapshots").glob("*"):
        old.unlink()
    per_run = max(args.frames // 3, 1)
    runs, modified, read_bytes = [], [], 0
    states = out / "file_states.json"  # (size, sha256) of the earlier runs' files, kept by the helper
    checker = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    for k in range(3):
        sources = [
            FaultySource(str(video), "steady", fps=args.source_fps),
            FaultySource(str(video), "drops", fps=args.source_fps, end_after_s=args.disconnect_s),
            FaultySource(str(video), "raises", fps=args.source_fps, raise_every=args.raise_every),
        ]
        faulty = FaultyBackend(backend, raise_on=50, nan_every=args.nan_every)
        snapshots = SnapshotSink(out / "snapshots", cal, interval=0.5)
        log: list[str] = []
        pipe = Pipeline(
            faulty,
            sources,
            image_size,
            cal,
            [EventsSink(events), snapshots],
            max_frames=per_run if k == 2 else None,
            status_every=30.0,
            log=log.append,
        )
        if k < 2:
            when_frames(pipe, per_run, sigterm)
        if k == 0:
            when_frames(pipe, min(10_000, per_run // 3), lambda p=pipe: probe["measure"](p, "after warm-up"))
        summary = pipe.run()
        rss_at_end = round(rss_mb(), 1)
        if k == 2:
            probe["measure"](pipe, "end")
        # The checks read every record and hash every file: in a helper process, so that their
        # buffers and parsed records never count in this process's RSS figure.
        recorded, labels, read_bytes = checker.submit(run_records, events, read_bytes).result()
        table = account(sources, recorded)
        modified += checker.submit(check_and_record_states, out, states, k > 0).result()
        partial = checker.submit(partial_snapshots, out / "snapshots").result()
        runs.append(
            {
                "run": k + 1,
                "frames": summary.frames,
                "stopped_by": summary.stopped_by,
                "error": summary.error,
                "errors (label error)": summary.errors,
                "nan frames injected": faulty.nan_frames,
                "backend retries": summary.backend_retries,
                "labels": dict(labels),
                "snapshots": {
                    "written": snapshots.written,
                    "failed (full disk)": snapshots.failed,
                    "half-written files left": len(partial),
                    "rate-limited": snapshots.skipped,
                },
                "accounting": table,
                "summary line": summary.line(),
                "log_lines": len(log),
                "rss_mb_at_end": rss_at_end,
            }
        )
    checker.shutdown()
    ok = all(balanced(r["accounting"]) and r["error"] is None for r in runs) and not modified
    ok = ok and not any(r["snapshots"]["half-written files left"] for r in runs)
    ok = ok and [r["stopped_by"] for r in runs] == ["SIGTERM", "SIGTERM", "--max-frames"]
    return {"ok": ok, "runs": runs, "files of earlier runs modified": modified}


def drain(fd: int) -> bytes:
    """Everything readable from a non-blocking pipe now (twice, a moment apart)."""
    data = b""
    for _ in range(2):
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        time.sleep(0.3)
    return data


def stalled_sink_phase(args, out: Path, backend, image_size: int, video: Path) -> dict:
    """Events into a FIFO nobody reads (the smallest pipe: full after a dozen records), and an
    overlay video; SIGTERM 3 s after the first record."""
    folder = out / "stall"
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*"):
        old.unlink()
    fifo, saved = folder / "events.fifo", folder / "overlay.avi"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
    sources = [FaultySource(str(video), f"stall{i}", fps=args.source_fps) for i in range(2)]
    log: list[str] = []
    pipe = Pipeline(
        backend,
        sources,
        image_size,
        None,
        [EventsSink(fifo), VideoSink(saved)],
        status_every=999,
        log=log.append,
        needs_view=True,
    )
    signalled: dict[str, float] = {}

    def stop_later() -> None:
        time.sleep(3.0)
        signalled["at"] = time.monotonic()
        sigterm()

    when_frames(pipe, 1, stop_later)
    summary = pipe.run()
    took = time.monotonic() - signalled["at"]
    delivered = drain(reader).decode().splitlines()
    os.close(reader)
    decoded = counted = 0  # one video per source, named by the run (runtime/runfiles.py)
    for made in folder.glob(f"{saved.stem}-*{saved.suffix}"):
        cap = cv2.VideoCapture(str(made))
        counted += int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        while cap.read()[0]:
            decoded += 1
    written = summary.frames - summary.unwritten
    table = account(sources, event_sources(delivered)[0])
    ok = (
        summary.error is not None
        and "EventsSink" in summary.error
        and took < SINK_STALL_S + 5
        and decoded == counted == written
        and written <= len(delivered) <= written + 1  # the blocked record reaches the pipe once it is drained
        and balanced(table, in_events=False)
    )
    return {
        "ok": ok,
        "seconds from SIGTERM to the end of the run": round(took, 2),
        "error line": summary.error,
        "frames": summary.frames,
        "written to every sink": written,
        "unwritten": summary.unwritten,
        "records that reached the FIFO": len(delivered),
        "video frames decoded": decoded,
        "accounting": table,
    }


def fairness_phase(args, backend, image_size: int, video: Path) -> dict:
    """More live sources than the batch holds; each source's share of the inspected frames."""
    n = backend.max_batch + 4
    sources = [FaultySource(str(video), f"cam{i:02d}", fps=args.fair_fps) for i in range(n)]
    pipe = Pipeline(
        backend, sources, image_size, None, [], max_frames=args.fair_frames, status_every=999, log=lambda _: None
    )
    summary = pipe.run()
    shares = {name: round(f.inspected / summary.frames, 4) for name, f in summary.sources.items()}
    figure = max(abs(share * n - 1) for share in shares.values())
    table = account(sources, Counter())
    return {
        "ok": figure <= 0.2 and balanced(table, in_events=False) and summary.error is None,
        "sources": n,
        "max batch": backend.max_batch,
        "frames": summary.frames,
        "inspected share per source": shares,
        "fairness (largest departure from an equal share)": round(figure, 3),
        "dropped per source": {name: f.dropped for name, f in summary.sources.items()},
        "summary line": summary.line(),
    }


def clock_step_phase(args, out: Path, backend, image_size: int, cal: Calibration, video: Path) -> dict:
    """The wall clock stepped back an hour half-way through a run (time.time replaced for the
    whole process: sources stamp frames, the pipeline measures latency, sinks rate-limit with it)."""
    folder = out / "clock"
    (folder / "snapshots").mkdir(parents=True, exist_ok=True)
    for old in (folder / "snapshots").glob("*"):
        old.unlink()
    events = folder / "events.jsonl"
    events.unlink(missing_ok=True)
    sources = [FaultySource(str(video), f"clock{i}", fps=args.source_fps) for i in range(3)]
    snapshots = SnapshotSink(folder / "snapshots", cal, interval=0.5)
    pipe = Pipeline(
        backend,
        sources,
        image_size,
        cal,
        [EventsSink(events), snapshots],
        max_frames=args.clock_frames,
        status_every=999,
        log=lambda _: None,
    )
    clock = SteppedClock(time.time, -3600.0)
    at_step: dict[str, int] = {}

    def step() -> None:
        at_step["snapshots"] = snapshots.written
        clock.step()

    when_frames(pipe, args.clock_frames // 2, step)
    time.time = clock
    try:
        summary = pipe.run()
    finally:
        time.time = clock.real
    recorded, _, latencies = event_sources(events.read_text().splitlines())
    table = account(sources, recorded)
    return {
        "ok": balanced(table)
        and summary.error is None
        and "snapshots" in at_step
        and min(latencies, default=0.0) >= 0
        # as many frames follow the step as precede it: snapshots go on at a like rate
        and snapshots.written - at_step["snapshots"] >= at_step["snapshots"] / 3,
        "frames": summary.frames,
        "error": summary.error,
        "negative latency_ms records": sum(v < 0 for v in latencies),
        "min latency_ms": round(min(latencies), 1) if latencies else None,
        "snapshots written before / after the step": [
            at_step.get("snapshots"),
            snapshots.written - at_step.get("snapshots", 0),
        ],
        "accounting": table,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=200_000, help="frames to infer over the three runs (all sources)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--disconnect-s", type=float, default=20.0)
    ap.add_argument("--raise-every", type=int, default=5000)
    ap.add_argument("--nan-every", type=int, default=997)
    ap.add_argument("--source-fps", type=float, default=150.0, help="frames per second each source delivers")
    ap.add_argument("--fair-frames", type=int, default=2400, help="frames of the fairness phase")
    ap.add_argument("--fair-fps", type=float, default=30.0, help="frames per second of each fairness-phase source")
    ap.add_argument("--clock-frames", type=int, default=1500, help="frames of the clock-step phase")
    args = ap.parse_args()
    out = args.out.resolve()
    (out / "snapshots").mkdir(parents=True, exist_ok=True)
    # Between runs a late SIGTERM from a stopper thread must not kill the script (each run installs its own).
    signal.signal(signal.SIGTERM, lambda *_: None)

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
    sample = np.stack([cv2.resize(f, (art.manifest.image_size, art.manifest.image_size)) for f in frames])
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

    import clipad.runtime.runfiles as runfiles_module
    import clipad.runtime.sinks as sinks_module

    rss: dict[str, float] = {}
    line_cost: dict[str, float] = {}

    def measure(pipe: Pipeline, tag: str) -> None:
        rss[tag] = round(rss_mb(), 1)
        t0 = time.perf_counter()
        for _ in range(100):
            pipe.summary.line()
        line_cost[tag] = round((time.perf_counter() - t0) * 10, 4)  # ms per status line

    expected_s = args.frames / 300.0  # rough: the full-disk window sits in the middle of the runs
    full_disk = FullDiskWindow(0.3 * expected_s, 0.4 * expected_s)
    writers = (sinks_module, runfiles_module)  # the snapshot sink's files fail in that window
    for module in writers:
        module.open = full_disk.open
    t_start = time.perf_counter()
    try:
        restarts = restart_runs(args, out, backend, art.manifest.image_size, cal, video, {"measure": measure})
    finally:
        for module in writers:
            delattr(module, "open")
    seconds = time.perf_counter() - t_start
    frames_served = sum(r["frames"] for r in restarts["runs"])
    phases = {
        "stalled sink": stalled_sink_phase(args, out, backend, art.manifest.image_size, video),
        "fairness": fairness_phase(args, backend, art.manifest.image_size, video),
        "clock step": clock_step_phase(args, out, backend, art.manifest.image_size, cal, video),
    }
    report = {
        "frames": frames_served,
        "seconds": round(seconds, 1),
        "fps": round(frames_served / seconds, 1),
        "restarts": restarts,
        **phases,
        "rss_mb": rss,
        "status_line_ms": line_cost,
        "rss_growth_mb": round(rss["end"] - rss["after warm-up"], 1) if len(rss) == 2 else None,
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    failed = [name for name, part in [("restarts", restarts), *phases.items()] if not part["ok"]]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
