"""Helpers shared by the tests (not part of the package)."""

from __future__ import annotations

import errno
import json
import shutil
import socket
from pathlib import Path

import cv2
import numpy as np
import torch

from clipad.core.progress import Tasks
from clipad.data import Sample
from clipad.data.synth import sample_images
from clipad.evaluation.evaluate import EvalConfig, evaluate
from clipad.model.heads import Heads
from clipad.model.loading import LoadedModel

# The tiny model with random weights, no progress bars: the options of most CLI tests.
TINY = ["--model", "clipad-tiny", "--random-weights", "--quiet"]


def few_prompts(folder: Path) -> Path:
    """A prompt file of 2 normal and 2 abnormal states in 2 templates (8 sentences): the full-size
    tests run the whole text tower on them in seconds, not on the industrial set's 418 (~37 s each)."""
    path = folder / "few_prompts.json"
    templates = ["a photo of a {}.", "a cropped photo of the {}."]
    path.write_text(
        '{"normal": ["{}", "flawless {}"], "abnormal": ["damaged {}", "{} with defect"], '
        f'"templates": {json.dumps(templates)}}}'
    )
    return path


def run(capsys, *args) -> tuple[int, str, str]:
    """`clipad ARGS` in this process: (exit code, stdout, stderr)."""
    from clipad import cli

    code = cli.run([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """Exit 1, and the error is one line (after any notes printed before the failure)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1, err
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    for f in fragments:
        assert f in errors[0], errors[0]


def mean_pixel_auroc(
    loaded: LoadedModel, split: dict[str, list[Sample]], heads: Heads | None, sigma: float = 2.0
) -> float:
    """Pixel AUROC of SDP (or SDP+ with ``heads``) per category of ``split``, averaged, as
    `clipad eval` computes it (dbscan text vectors, MVTec profile): the quick learning check of
    the training tests."""
    cfg = EvalConfig(method="sdp" if heads is None else "sdp+", heads=heads, sigma=sigma)
    return evaluate(loaded, split, cfg, Tasks(None)).mean.pixel["auroc"]


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


def write_video(path: Path, n: int, size=(160, 128), fourcc="FFV1", fps: float = 10) -> list[np.ndarray]:
    images = sample_images(n, width=size[0], height=size[1])
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    for im in images:
        w.write(cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    w.release()
    return images


def closed_port() -> int:
    """A loopback port with nothing listening on it (bound, read and closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fresh(setup, tmp_path, name="art"):
    """A copy of the calibration tests' export (the ``setup`` fixture) to change freely."""
    shutil.copytree(setup / "art", tmp_path / name)
    return tmp_path / name


def random_text(dim: int, seed: int = 0) -> torch.Tensor:
    """Two random unit text vectors as columns: [dim, 2]."""
    t = torch.randn(dim, 2, generator=torch.Generator().manual_seed(seed))
    return t / t.norm(dim=0, keepdim=True)


def random_heads(width: int, dim: int, seed: int = 0) -> Heads:
    """Random SDP+ heads (four linear maps width -> dim)."""
    g = torch.Generator().manual_seed(seed)
    return Heads(torch.randn(4, dim, width, generator=g) / width**0.5, 0.1 * torch.randn(4, dim, generator=g))


def onnx_pipeline(art, sources, sinks=(), **options):
    """A Pipeline serving ``art`` on ONNX Runtime (CPU, FP32), uncalibrated, into ``sinks``;
    ``options`` are Pipeline's keywords (status_every defaults to 999 s, log to silence)."""
    from clipad.runtime.backends import open_backend
    from clipad.runtime.pipeline import Pipeline

    options = {"status_every": 999, "log": lambda s: None, **options}
    return Pipeline(
        open_backend(art, "onnxruntime", "fp32", "cpu"), sources, art.manifest.image_size, None, list(sinks), **options
    )


class FillsUp:
    """A file on a disk that fills up: half of each write lands, then ENOSPC (used by the tests
    and by scripts/soak_check.py's full-disk window)."""

    def __init__(self, f):
        self.f = f

    def write(self, data: bytes) -> int:
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()
