"""`clipad run`: sources and sinks assembled around one pipeline.

``RunConfig`` says what to read and where results go; ``run_stream`` opens the sinks, then the
sources (so a failure to open anything leaves nothing running), runs the pipeline until the
input ends, ``--max-frames``, a signal or a sink failure, and closes everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.runtime.pipeline import Pipeline, Summary
from clipad.runtime.retention import Limits
from clipad.runtime.runfiles import new_run_id
from clipad.runtime.serving import Served
from clipad.runtime.sinks import EventsSink, ShowSink, Sink, SnapshotSink, VideoSink
from clipad.runtime.source_specs import open_sources


@dataclass
class RunConfig:
    """cameras: camera indices; sources: video files, image folders/globs, stream URLs; events:
    JSON Lines file; save: overlay video; snapshots: folder for anomalous frames, at most one
    per source every ``snapshot_interval`` seconds (0: all); show: OpenCV window; serve: HOST:PORT
    of the live viewer. ``*_max_mb`` / ``*_max_age_h``: retention of the snapshot and video files
    this tool wrote in their folders, a quota in MiB and an age in hours (0: none)."""

    cameras: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    events: Path | None = None
    events_max_mb: float = 0.0
    save: Path | None = None
    segment_minutes: float = 0.0
    snapshots: Path | None = None
    snapshot_interval: float = 1.0
    snapshots_max_mb: float = 0.0
    snapshots_max_age_h: float = 0.0
    segments_max_mb: float = 0.0
    segments_max_age_h: float = 0.0
    show: bool = False
    serve: str | None = None
    max_frames: int | None = None
    status_every: float = 5.0

    def __post_init__(self) -> None:
        self.cameras, self.sources = list(self.cameras or []), list(self.sources or [])  # None (no option): none

    def check(self) -> None:
        """One-line errors for settings that cannot run, before any model work."""
        if not self.cameras and not self.sources:
            raise ClipadError("give --camera N or --source PATH_OR_URL (repeatable)")
        if self.events_max_mb < 0 or self.segment_minutes < 0:
            raise ClipadError("--events-max-mb and --segment-minutes must be >= 0 (0: off)")
        if self.snapshot_interval < 0:
            raise ClipadError(f"--snapshot-interval must be >= 0 seconds, got {self.snapshot_interval}")
        for folder, name, needs in ((self.snapshots, "snapshots", "--snapshots"), (self.save, "segments", "--save")):
            limits = (getattr(self, f"{name}_max_mb"), getattr(self, f"{name}_max_age_h"))
            if min(limits) < 0 or (max(limits) > 0 and folder is None):
                raise ClipadError(f"--{name}-max-mb and --{name}-max-age-h must be >= 0 (0: none) and need {needs}")

    def retention(self, name: str) -> Limits:
        """The retention limits of ``name`` ("snapshots" or "segments")."""
        mb, hours = getattr(self, f"{name}_max_mb"), getattr(self, f"{name}_max_age_h")
        return Limits(int(mb * 2**20), hours * 3600)

    @property
    def needs_view(self) -> bool:
        """Whether any sink shows the rendered overlay."""
        return self.show or any(x is not None for x in (self.save, self.snapshots, self.serve))


def open_sinks(cfg: RunConfig, served: Served, log: Callable[[str], None]) -> list[Sink]:
    """The sinks ``cfg`` asks for, in a fixed order; on failure the ones opened are closed."""
    from clipad.runtime.server import ServeSink

    sinks: list[Sink] = []
    run = new_run_id()  # one id for the events, snapshots and videos of this run
    try:
        if cfg.events is not None:
            sinks.append(EventsSink(cfg.events, max_bytes=int(cfg.events_max_mb * 2**20), run=run))
        if cfg.save is not None:
            sinks.append(
                VideoSink(cfg.save, segment_s=cfg.segment_minutes * 60, run=run, retention=cfg.retention("segments"))
            )
        if cfg.snapshots is not None:
            limits = cfg.retention("snapshots")
            sinks.append(SnapshotSink(cfg.snapshots, served.calibration, cfg.snapshot_interval, run, limits))
        if cfg.show:
            sinks.append(ShowSink())
        if cfg.serve is not None:
            viewer = ServeSink(cfg.serve, calibrated=served.calibration is not None)
            sinks.append(viewer)
            log(f"live viewer: {viewer.viewer.address}")
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    if any(x is not None for x in (cfg.events, cfg.save, cfg.snapshots)):
        log(f"run id {run} (in each event, and in the names of this run's snapshot and video files)")
    return sinks


def run_stream(cfg: RunConfig, served: Served, log: Callable[[str], None]) -> Summary:
    """Stream every source through ``served`` into the sinks; returns the run's summary.

    A sink failure (full disk, ...) ends the run with a ClipadError after everything is closed."""
    cfg.check()
    sinks = open_sinks(cfg, served, log)
    try:
        sources, problems = open_sources(cfg.cameras, cfg.sources)
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    for p in problems:
        log(f"warning: {p}")
    pipe = Pipeline(
        served.backend,
        sources,
        served.artifacts.geometry,
        served.calibration,
        sinks,
        cfg.max_frames,
        cfg.status_every,
        log=log,
        needs_view=cfg.needs_view,
    )
    summary = pipe.run()
    log(f"summary: {summary.line()} (stopped by {summary.stopped_by})")
    if summary.error:
        raise ClipadError(summary.error)
    return summary
