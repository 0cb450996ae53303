"""A ``--source`` value -> the source that reads it: a stream URL, a GenICam camera (``gige://``,
``u3v://``), a video file, an image file, a folder or a glob. Apart from the sources themselves
(``sources``; the cameras in ``cameras/``, which build on them), so neither imports the other's
users."""

from __future__ import annotations

from pathlib import Path

from clipad.core.errors import ClipadError
from clipad.core.redaction import redact
from clipad.runtime.cameras.spec import is_camera_spec
from clipad.runtime.sources import VIDEO_SUFFIXES, ImageFilesSource, LiveSource, Source, VideoFileSource, stream_url


def open_source(spec: str) -> Source:
    """A --source value: stream URL, GenICam camera (gige:// or u3v://), video file, image file,
    folder or glob."""
    if is_camera_spec(spec):
        from clipad.runtime.cameras.genicam import GenICamSource  # Aravis is imported only when a camera is used

        return GenICamSource(spec)
    if stream_url(spec) is not None:
        return LiveSource(spec)
    p = Path(spec)
    if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
        return VideoFileSource(spec)
    if p.exists() or any(c in spec for c in "*?["):
        return ImageFilesSource(spec)
    raise ClipadError(
        f"source not found: {redact(spec)} "
        "(a video file, image file, folder, glob, rtsp/http URL, or gige:// or u3v:// camera)"
    )


def open_sources(cameras: list[int], specs: list[str]) -> tuple[list[Source], list[str]]:
    """Open every source; failures are reported and skipped unless nothing at all opens."""
    opened, problems = [], []
    every: list[int | str] = [*cameras, *specs]
    for spec in every:
        try:
            opened.append(LiveSource(spec) if isinstance(spec, int) else open_source(spec))
        except ClipadError as err:
            problems.append(str(err))
    if not opened:
        raise ClipadError(problems[0] if len(problems) == 1 else "no source could be opened: " + "; ".join(problems))
    return opened, problems
