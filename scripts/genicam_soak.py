"""Software-trigger soak of the station against a real GigE Vision camera (issue 26's goals).

Aravis' camera emulator (``arv-fake-gv-camera-0.8 -i 127.0.0.1``) is started as a child process;
the station runs in this process with the camera as its source (``trigger=software``) and the
calibrated recipe ``--artifacts``. ``--triggers`` triggers are sent one after another, each when
the previous result is out (a line that indexes the next part after the verdict). Mid-run the
camera process is killed (SIGKILL: a pulled cable) ``--restarts`` times and started again after
``--outage-s`` seconds. Checked:

- one result per trigger, each job id once;
- every inspected job (OK or NG) names the frame it inspected (``frame_id``), that frame was the
  one its capture returned, produced after the trigger (its software trigger fired after the
  trigger was received: zero stale frames), and frame ids strictly increase (within each camera
  lifetime: a restarted camera numbers from 1 again; the source's own frame index across all);
- only jobs triggered during an outage are answered error (counted), none timeout.

Figures: trigger-to-frame latency inside the source (software trigger fired -> frame decoded),
capture (trigger received -> frame handed to the job), station job latency (trigger received ->
result), p50/p99. Then free-run at the emulator's maximum rate (``frame_rate=1000``) for
``--free-run-s`` seconds, read as fast as one consumer can: frames per second delivered, and every
frame Aravis completed accounted for as read, dropped by the newest-frame policy or incomplete.

    python scripts/genicam_soak.py --artifacts ART [--triggers 10000] [--restarts 2]

Exits 1 when a check fails, 2 when the emulator or Aravis is missing.
"""

from __future__ import annotations

import argparse
import errno
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipad.runtime.sources import Frame
from clipad.runtime.station.recipes import RecipeBook, ServeOptions
from clipad.runtime.station.records import JobResult, Trigger, Verdict
from clipad.runtime.station.station import Station, StationConfig

EMULATOR = "arv-fake-gv-camera-0.8"
HOST = "127.0.0.1"  # the emulator answers only on an interface's own address
GVCP = 3956
BACKOFF = (0.2, 1.0)  # reconnect backoff of the source (seconds)


class Emulator:
    """The emulator process: started, SIGKILLed, started again."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def serving() -> bool:
        """Whether the GigE Vision control port is taken (binding it fails with EADDRINUSE)."""
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((HOST, GVCP))
            return False
        except OSError as err:
            return err.errno == errno.EADDRINUSE
        finally:
            probe.close()

    def start(self) -> None:
        if self.serving():
            raise SystemExit(f"something already serves GigE Vision on {HOST}:{GVCP}")
        self.proc = subprocess.Popen([EMULATOR, "-i", HOST], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        give_up = time.monotonic() + 10
        while not self.serving():
            if self.proc.poll() is not None or time.monotonic() > give_up:
                raise SystemExit(f"{EMULATOR} did not start serving")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@dataclass
class Capture:
    """One capture the station asked of the source: the trigger's time, the frame (None: none in
    time), when the capture returned and the source's reconnect count then."""

    after: float
    frame: Frame | None
    returned: float
    reconnects: int


def recording_source(spec: str):
    """The real GenICam source, noting every capture (imported here: Aravis is checked first)."""
    from clipad.runtime.cameras.genicam import GenICamSource

    class Recording(GenICamSource):
        def __init__(self, *a, **kw) -> None:
            self.captures: list[Capture] = []
            super().__init__(*a, **kw)

        def capture(self, after: float, timeout: float) -> Frame | None:
            frame = super().capture(after, timeout)
            self.captures.append(Capture(after, frame, time.monotonic(), self.stats.reconnects))
            return frame

    return Recording(spec, backoff=BACKOFF, lost_after_s=0.5)


@dataclass
class Outages:
    """When the camera was killed and started again (monotonic seconds)."""

    killed: list[float] = field(default_factory=list)
    started: list[float] = field(default_factory=list)

    def cut(self, camera: Emulator, outage_s: float) -> threading.Thread:
        def run() -> None:
            self.killed.append(time.monotonic())
            camera.kill()
            time.sleep(outage_s)
            camera.start()
            self.started.append(time.monotonic())

        t = threading.Thread(target=run, name="outage", daemon=True)
        t.start()
        return t


def pct(values: list[float]) -> str:
    if not values:
        return "none"
    p50, p99 = np.percentile(values, [50, 99])
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(values):.1f} ms (n={len(values)})"


def unwrapped(ids: list[int]) -> list[int]:
    """GigE Vision 1.x frame ids wrap at 16 bits (0 unused): made monotonic for the check."""
    out, offset = [], 0
    for i, v in enumerate(ids):
        if i and v < ids[i - 1] and ids[i - 1] - v > 0x8000:
            offset += 0xFFFF
        out.append(v + offset)
    return out


class Collector:
    """A publisher keeping every result."""

    def __init__(self) -> None:
        self.results: dict[str, list[JobResult]] = {}

    def publish(self, result: JobResult) -> None:
        self.results.setdefault(result.job_id, []).append(result)

    def close(self) -> None:
        pass


def soak(art: Path, triggers: int, restarts: int, outage_s: float, roi: str, fail: list[str]) -> None:
    camera, outages = Emulator(), Outages()
    camera.start()
    source = recording_source(f"gige://{HOST}?roi={roi}&trigger=software")
    book = RecipeBook.load([f"soak={art}"], options=ServeOptions("onnxruntime", "cpu", "fp32"))
    collector = Collector()
    station = Station(book, [collector], StationConfig(), log=lambda s: print(s, file=sys.stderr), source=source)
    cut_at = {triggers * (i + 1) // (restarts + 1) for i in range(restarts)}
    sent: list[tuple[str, Trigger]] = []
    cutting: list[threading.Thread] = []
    began = time.monotonic()
    try:
        for k in range(triggers):
            if k in cut_at:
                cutting.append(outages.cut(camera, outage_s))
            trigger = Trigger("replay", part_id=str(k))
            job = station.submit(trigger)
            sent.append((job, trigger))
            if station.wait(job, 60) is None:
                fail.append(f"job {job}: no result within 60 s")
                break
        for t in cutting:
            t.join(30)
    finally:
        station.close()
        source.close()
        book.close()
        camera.kill()
    took = time.monotonic() - began

    results = collector.results
    captures = source.captures
    print(f"software trigger: {len(sent)} triggers in {took:.0f} s, {restarts} camera restart(s) of {outage_s:g} s")
    if len(results) != len(sent) or any(len(v) != 1 for v in results.values()):
        fail.append(f"{len(sent)} triggers but {len(results)} job ids with results, some more than once")
    if len(captures) != len(sent):
        fail.append(f"{len(sent)} jobs but {len(captures)} captures")
    verdicts = [results[job][0] for job, _ in sent if job in results]
    # The worker takes jobs in order, one capture each: capture k is job k's.
    inspected, errors = [], []
    for (job, trigger), result, cap in zip(sent, verdicts, captures, strict=False):
        if result.verdict in (Verdict.OK, Verdict.NG):
            inspected.append((trigger, result, cap))
        elif result.verdict is Verdict.ERROR:
            errors.append((trigger, result))
        else:
            fail.append(f"job {job}: {result.verdict.value} ({result.why})")
    stale = 0
    for trigger, result, cap in inspected:
        frame = cap.frame
        if frame is None or frame.grab_began is None or frame.frame_id is None:
            fail.append(f"job {result.job_id} inspected without a recorded frame")
            continue
        if result.frame_id != frame.frame_id:
            fail.append(f"job {result.job_id}: frame_id {result.frame_id}, but its capture returned {frame.frame_id}")
        if frame.grab_began < trigger.received:
            stale += 1
    # Frame ids strictly increase within each camera lifetime (a restart numbers from 1 again).
    lifetimes: dict[int, list[int]] = {}
    for _, _, cap in inspected:
        if cap.frame is not None and cap.frame.frame_id is not None:
            lifetimes.setdefault(cap.reconnects, []).append(cap.frame.frame_id)
    for n, ids in lifetimes.items():
        u = unwrapped(ids)
        if any(b <= a for a, b in zip(u, u[1:], strict=False)):
            fail.append(f"camera lifetime {n}: frame ids not strictly increasing")
    indexes = [cap.frame.index for _, _, cap in inspected if cap.frame is not None]
    if any(b <= a for a, b in zip(indexes, indexes[1:], strict=False)):
        fail.append("the source's frame indexes are not strictly increasing")
    if stale:
        fail.append(f"{stale} stale frame(s): produced before their trigger")
    # Errors only for triggers in an outage: from a kill until the first frame after the restart.
    back = []
    for started in outages.started:
        after = [c.returned for c in captures if c.frame is not None and c.after >= started]
        back.append(min(after) if after else float("inf"))
    windows = list(zip(outages.killed, back, strict=False))
    outside = [r for t, r in errors if not any(k - 1.0 <= t.received <= b for k, b in windows)]
    for r in outside[:5]:
        fail.append(f"job {r.job_id} answered error outside an outage: {r.why}")
    if len(lifetimes) < restarts + 1:
        fail.append(f"frames from {len(lifetimes)} camera lifetime(s); {restarts + 1} expected")
    print(f"  results {len(results)}: inspected {len(inspected)} (OK/NG), error {len(errors)} (all in outages: "
          f"{not outside}), stale frames inspected {stale}; source: triggers fired {source.triggers}, "
          f"waiting frames discarded {source.stale}, incomplete {source.incomplete}, "
          f"lost {source.stats.lost}, reconnects {source.stats.reconnects}")  # fmt: skip
    for k, b in windows:
        print(f"  outage: camera killed, first frame again {b - k:.1f} s later")
    whys = sorted({r.why or "" for _, r in errors})
    if whys:
        print(f"  error reasons: {'; '.join(whys)}")
    frames = [c.frame for _, _, c in inspected if c.frame is not None and c.frame.grab_began is not None]
    print(f"  trigger to frame (software trigger fired -> frame decoded, in the source): "
          f"{pct([(f.monotonic - f.grab_began) * 1000 for f in frames if f.grab_began is not None])}")  # fmt: skip
    print(f"  capture (trigger received -> frame handed to the job): "
          f"{pct([(c.returned - c.after) * 1000 for _, _, c in inspected])}")  # fmt: skip
    print(f"  station job latency (trigger received -> result): {pct([r.latency_ms for _, r, _ in inspected])}")
    inference = [r.inference_ms for _, r, _ in inspected if r.inference_ms is not None]
    print(f"  of which inference (tiny model, ONNX Runtime CPU): {pct(inference)}")


def free_run(seconds: float, roi: str, fail: list[str]) -> None:
    from clipad.runtime.cameras.genicam import GenICamSource

    camera = Emulator()
    camera.start()
    source = GenICamSource(f"gige://{HOST}?roi={roi}&frame_rate=1000", backoff=BACKOFF)
    try:
        read, ids = 0, []
        source.read(2.0)  # the first frame: acquisition is running
        t0 = time.monotonic()
        while (now := time.monotonic()) - t0 < seconds:
            frame = source.read(0.5)
            if frame is not None:
                read += 1
                ids.append(frame.frame_id)
        source.stop_acquisition()
        counts = source.stream_counts()
    finally:
        source.close()
        camera.kill()
    took = now - t0
    print(f"free-run, frame_rate=1000 asked, roi {roi}, {took:.1f} s: {read / took:.0f} frames/s read "
          f"({source.readback.split('settings read back: ')[-1]})")  # fmt: skip
    if counts is None:
        fail.append("free-run: the stream was not open at the end")
        return
    handed = counts.completed + counts.failures  # every buffer Aravis handed over, since it opened
    taken = source.stats.frames + source.stats.dropped + source.incomplete + counts.waiting
    print(
        f"  Aravis: {counts.completed} frames complete, {counts.failures} incomplete, {counts.missing} missing, "
        f"{counts.underruns} underruns; clipad: read {source.stats.frames}, dropped by the newest-frame policy "
        f"{source.stats.dropped}, incomplete {source.incomplete}, left in the stream at stop {counts.waiting}"
    )
    if read == 0:
        fail.append("free-run: no frame read")
    if handed != taken:
        fail.append(f"free-run: Aravis handed over {handed} buffers, clipad accounts for {taken}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", type=Path, required=True, help="a calibrated export (clipad calibrate)")
    ap.add_argument("--triggers", type=int, default=10_000)
    ap.add_argument("--restarts", type=int, default=2, help="camera kills and restarts, evenly spread")
    ap.add_argument("--outage-s", type=float, default=2.0, help="seconds the camera stays dead each time")
    ap.add_argument("--roi", default="0,0,512,512", help="x,y,width,height of the frames (512x512: the whole sensor)")
    ap.add_argument("--free-run-s", type=float, default=5.0, help="seconds of free-run (0: none)")
    a = ap.parse_args()
    if shutil.which(EMULATOR) is None:
        print(f"{EMULATOR} is not installed (Debian package aravis-tools)", file=sys.stderr)
        return 2
    from clipad.core.errors import ClipadError
    from clipad.runtime.cameras.aravis import load_aravis

    try:
        load_aravis()
    except ClipadError as err:
        print(err, file=sys.stderr)
        return 2
    fail: list[str] = []
    soak(a.artifacts, a.triggers, a.restarts, a.outage_s, a.roi, fail)
    if a.free_run_s > 0:
        free_run(a.free_run_s, a.roi, fail)
    for line in fail:
        print(f"FAILED: {line}")
    print("all checks passed" if not fail else f"{len(fail)} check(s) failed")
    return 1 if fail else 0


if __name__ == "__main__":
    sys.exit(main())
