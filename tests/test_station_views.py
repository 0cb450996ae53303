"""The operator's page's memory (``StationViews``) on real results and real overlays: the newest job
wins the live slot while the drawing thread is busy (and NG jobs still reach the gallery), the
gallery and the history stay bounded, the last hour rolls by the minute, recipe names are capped,
and the state is strict JSON."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
from PIL import Image

from clipad.runtime.station.records import JobResult, Verdict
from clipad.runtime.station.views import MAX_RECIPES, OTHER, Counts, StationViews


def result(n: int, verdict: Verdict = Verdict.OK, recipe: str = "a", score: float | None = 0.3) -> JobResult:
    return JobResult(f"run-{n}", f"P-{n}", recipe, verdict, "http", 1_800_000_000.0 + n, 5.0, None, score)


def image(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (h, w, 3), dtype=np.uint8)


AMAP = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)


class Gated(StationViews):
    """The real views whose drawing waits at a gate the test opens (a busy drawing thread)."""

    def __init__(self, **kw):
        self.gate, self.drawing = threading.Event(), threading.Event()
        super().__init__(**kw)

    def _render(self, shot):
        self.drawing.set()
        assert self.gate.wait(10)
        return super()._render(shot)


def jpeg_size(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def test_the_newest_job_wins_the_live_slot_and_ng_jobs_still_reach_the_gallery():
    views = Gated()
    try:
        first = result(1)
        views.inspected(first, image(1), AMAP)
        assert views.drawing.wait(10)  # the drawing thread holds job 1
        t0 = time.perf_counter()
        for n, verdict in ((2, Verdict.NG), (3, Verdict.OK), (4, Verdict.NG), (5, Verdict.OK), (6, Verdict.OK)):
            views.inspected(result(n, verdict, score=0.7 if verdict is Verdict.NG else 0.2), image(n, 40, 90), AMAP)
        handed = time.perf_counter() - t0
        assert views.live_jpeg(0) is None and views.state().gallery == ()  # nothing drawn on the caller's thread
        views.gate.set()
        assert views.wait_drawn(10)
        state = views.state()
        live = state.live[0]
        assert live is not None and live.job_id == "run-6" and state.skipped == 4  # jobs 2 to 5 were replaced
        assert [g.part_id for g in state.gallery] == ["P-4", "P-2"]  # newest first
        data = views.live_jpeg(0)
        assert data is not None and jpeg_size(data) == (90, 40)
        full, thumb = views.ng_jpeg(state.gallery[0].key, True), views.ng_jpeg(state.gallery[0].key, False)
        assert full is not None and thumb is not None and jpeg_size(full) == (90, 40) and jpeg_size(thumb)[0] <= 90
        assert views.live_jpeg(1) is None and views.ng_jpeg(999, True) is None
        assert handed < 0.5, f"handing in 5 jobs took {handed:.3f} s"
    finally:
        views.gate.set()
        views.close()


def test_the_gallery_and_history_are_bounded():
    views = StationViews(gallery=5, history=8, thumb_px=32)
    try:
        for n in range(1, 21):
            r = result(n, Verdict.NG, score=0.5 + n / 100)
            views.publish(r)
            views.inspected(r, image(n, 96, 128), AMAP)
        assert views.wait_drawn(20)
        state = views.state()
        assert [g.part_id for g in state.gallery] == [f"P-{n}" for n in range(20, 15, -1)]
        assert [p.job_id for p in state.history] == [f"run-{n}" for n in range(13, 21)]
        assert views.ng_jpeg(state.gallery[-1].key, False) is not None
        thumb = views.ng_jpeg(state.gallery[0].key, False)
        assert thumb is not None and jpeg_size(thumb) == (32, 24)
        evicted = state.gallery[-1].key - 1
        assert views.ng_jpeg(evicted, True) is None and views.ng_jpeg(evicted, False) is None
        assert state.total.since_start == Counts(ng=20)
    finally:
        views.close()


def test_counters_since_start_and_in_the_rolling_hour():
    now = [3600.0 * 1000]  # at a minute's start
    views = StationViews(clock=lambda: now[0])
    try:
        views.publish(result(1, Verdict.OK))
        views.publish(result(2, Verdict.NG, score=0.8))
        now[0] += 30 * 60
        views.publish(result(3, Verdict.ERROR, score=None))
        views.publish(result(4, Verdict.TIMEOUT, recipe="b", score=None))
        state = views.state()
        (a, b), total = state.counters, state.total
        assert a.recipe == "a" and a.since_start == a.last_hour == Counts(ok=1, ng=1, error=1)
        assert b.recipe == "b" and b.since_start == b.last_hour == Counts(timeout=1)
        assert total.since_start == total.last_hour == Counts(1, 1, 1, 1)
        assert [p.job_id for p in state.history] == ["run-1", "run-2"]  # only scored results are plotted
        now[0] += 29 * 60 + 59  # 59 min 59 s after the first two: still in the hour
        assert views.state().total.last_hour == Counts(1, 1, 1, 1)
        now[0] += 1  # the first minute has left the hour
        state = views.state()
        assert state.total.last_hour == Counts(error=1, timeout=1) and state.total.since_start == Counts(1, 1, 1, 1)
        now[0] += 30 * 60  # all of it has left the hour
        views.publish(result(5, Verdict.OK))
        state = views.state()
        assert state.total.last_hour == Counts(ok=1) and state.total.since_start == Counts(2, 1, 1, 1)
        assert state.counters[1].last_hour == Counts()  # b: nothing in the last hour
        json.dumps(state.to_json(), allow_nan=False)
    finally:
        views.close()


def test_recipe_names_are_capped():
    views = StationViews()
    try:
        for n in range(MAX_RECIPES + 5):
            views.publish(result(n, Verdict.ERROR, recipe=f"r{n:03d}", score=None))
        views.publish(result(999, Verdict.OK, recipe="r000"))  # a recipe already counted keeps its row
        counters = {c.recipe: c.since_start for c in views.state().counters}
        assert len(counters) == MAX_RECIPES + 1 and counters[OTHER] == Counts(error=5)
        assert counters["r000"] == Counts(ok=1, error=1)
    finally:
        views.close()
