"""`clipad parity` over an artifact directory: every backend named against the FP32 PyTorch reference
(``runtime.parity``), on the user's images or the built-in synthetic ones; the table, the JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipad.core.atomic import write_text_atomic

PARITY_INPUTS = 3  # the built-in synthetic inputs: 2 parts with defects and 1 noise image
MAX_IMAGES = 8  # of the user's folder


def check_parity(
    artifacts: Path,
    backends: list[str],
    images: Path | None,
    device: str,
    triton: Any,
    say: Callable[[str], None],
    json_out: Path | None = None,
) -> bool:
    """Compare ``backends`` on ``artifacts``; ``say`` the table, write the rows to ``json_out``. Whether no
    row is outside its limit (a precision without a limit does not count)."""
    from clipad.data.images import read_model_images
    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.parity import parity_images
    from clipad.runtime.parity import format_rows, run_parity

    art = load_artifacts(artifacts)
    size = art.geometry
    x = read_model_images(images, size, MAX_IMAGES) if images else parity_images(size, PARITY_INPUTS)
    rows = run_parity(art, backends, x, device, triton)
    say(format_rows(rows))
    if json_out is not None:
        write_text_atomic(json_out, json.dumps([r.to_json() for r in rows], indent=2) + "\n")
    return not any(r.within_tolerance is False for r in rows)
