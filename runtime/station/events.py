"""The station's events log: every job result, and every late verdict, as one JSON line.

The lines go through the frame loop's ``EventsSink`` (the same lock file, flush per line, fsync
at most once a second, torn-line repair and rotation), each ``{"run": ..., **JobResult.to_json()}``;
a late verdict (one that came after its job's TIMEOUT was published) has ``"late": true`` and is
never the job's answer: the job's one answer is the line without it.
"""

from __future__ import annotations

from pathlib import Path

from clipad.runtime.sinks import EventsSink
from clipad.runtime.station.records import JobResult


class EventsPublisher:
    """A ``Publisher`` (and ``LateListener``) writing results to ``path`` (see ``EventsSink`` for
    ``max_bytes``, ``keep`` and ``run``); a failed write raises ``SinkError`` (one line), which the
    station counts and reports."""

    def __init__(self, path: str | Path, max_bytes: int = 0, keep: int = 5, run: str | None = None):
        self.sink = EventsSink(path, max_bytes, keep, run)

    @property
    def notes(self):
        """What the sink has to tell the operator (a torn line repaired), oldest first."""
        return self.sink.notes

    def publish(self, result: JobResult) -> None:
        self.sink.write_record(result.to_json())

    def late(self, result: JobResult) -> None:
        self.sink.write_record(result.to_json())

    def close(self) -> None:
        self.sink.close()
