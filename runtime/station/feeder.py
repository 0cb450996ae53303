"""Frames as jobs: a camera that is triggered by the line itself (a GenICam camera with
``trigger=hardware``: a light barrier or the PLC pulses its input line) sends one frame per part,
and each frame becomes one station job.

The feeder reads the source on its own thread and submits every frame as a ``Trigger`` with
``via="camera"``: the frame itself is the job's image (RGB, not decoded again), its frame id
(the camera's, else the source's index) goes into the result, and the trigger's time is when the
frame arrived. The part id is the frame's own (chunk data, where the camera sends one) or the
feeder's counter (1, 2, ...). A part must never go without an answer: every frame the source
dropped (the feeder fell behind and a newer frame replaced it) or could not use (an incomplete
frame: lost packets) is still one job, answered ERROR at once with why; a frame that finds the
station's queue full is answered ERROR ``busy`` by the station, as any trigger.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Callable

from clipad.runtime.sources import Source
from clipad.runtime.station.records import StationPort, Trigger

READ_S = 0.2  # the feeder waits at most this long for a frame, so a stop is seen promptly


class CameraFeeder:
    """Every frame of ``source`` (a live source: its ``read`` gives each new frame once) one job on
    ``station``, for ``recipe`` (None: the active one). ``jobs``: jobs submitted so far (frames
    plus frames lost before the station saw them)."""

    def __init__(
        self,
        station: StationPort,
        source: Source,
        recipe: str | None = None,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
    ):
        self.station, self.source, self.recipe, self.log = station, source, recipe, log
        self.jobs = 0
        self._counter = itertools.count(1)
        self._seen_dropped = source.stats.dropped
        self._seen_bad = source.stats.bad_frames
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name=f"feed-{source.name}", daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        while not self._stop.is_set():
            frame = self.source.read(READ_S)
            self._answer_lost()
            if frame is None:
                continue
            part = frame.part_id if frame.part_id is not None else str(next(self._counter))
            frame_id = frame.index if frame.frame_id is None else frame.frame_id
            self._submit(
                Trigger(
                    "camera",
                    part_id=part,
                    recipe=self.recipe,
                    image=frame.image,
                    frame_id=frame_id,
                    received=frame.monotonic,
                    received_wall=frame.time,
                )
            )

    def _answer_lost(self) -> None:
        """One ERROR job per frame the source dropped or could not use since the last look."""
        stats = self.source.stats
        dropped, bad = stats.dropped - self._seen_dropped, stats.bad_frames - self._seen_bad
        self._seen_dropped += dropped
        self._seen_bad += bad
        reasons = [f"frame dropped by {self.source.name}: a newer one came before it was read"] * dropped
        reasons += [f"incomplete frame from {self.source.name} (lost packets)"] * bad
        for why in reasons:
            self._submit(Trigger("camera", part_id=str(next(self._counter)), recipe=self.recipe, refused=why))

    def _submit(self, trigger: Trigger) -> None:
        self.station.submit(trigger)
        self.jobs += 1

    def close(self) -> None:
        """Stop feeding (the source and the station are closed by their owners, after this)."""
        self._stop.set()
        self._thread.join(READ_S * 5)
