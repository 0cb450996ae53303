"""Helpers shared by the tests (not part of the package)."""

from __future__ import annotations

from clipad.core.progress import Tasks
from clipad.data import Sample
from clipad.evaluation.evaluate import EvalConfig, evaluate
from clipad.model.heads import Heads
from clipad.model.loading import LoadedModel


def mean_pixel_auroc(
    loaded: LoadedModel, split: dict[str, list[Sample]], heads: Heads | None, sigma: float = 2.0
) -> float:
    """Pixel AUROC of SDP (or SDP+ with ``heads``) per category of ``split``, averaged, as
    `clipad eval` computes it (dbscan text vectors, MVTec profile): the quick learning check of
    the training tests."""
    return evaluate(loaded, split, EvalConfig(heads=heads, sigma=sigma), Tasks(None))["mean"]["pixel"]["auroc"]


def signal_run(video, artifacts, events, sig: int, min_events: int = 5, extra: tuple = ()) -> tuple[int, str, float]:
    """Start `python -m clipad run` on ``video`` writing ``events``, send ``sig`` once at least
    ``min_events`` records are written, and wait: (return code, stderr, seconds from signal to exit)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clipad",
            "run",
            "--source",
            str(video),
            "--artifacts",
            str(artifacts),
            "--backend",
            "onnxruntime",
            "--device",
            "cpu",
            "--events",
            str(events),
            "--status-every",
            "999",
            *map(str, extra),
        ],
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while (
            time.time() < deadline
            and proc.poll() is None
            and (not Path(events).exists() or len(Path(events).read_text().splitlines()) < min_events)
        ):
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the signal could be sent"
        t0 = time.time()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        return proc.returncode, err, time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_in_thread(fn, timeout: float = 30.0) -> dict:
    """Run ``fn`` in a thread and fail if it is still running after ``timeout`` s (a hang);
    returns {"result": ...} or {"error": the exception}."""
    import threading

    out: dict = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - kept for the test to inspect
            out["error"] = err

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"still running {timeout} s later (a hang)"
    return out
