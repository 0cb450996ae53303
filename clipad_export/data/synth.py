"""`clipad synth`: a small deterministic synthetic dataset in MVTec AD layout.

No real dataset can be downloaded on the machines this project is built on, so tests, demos
and benchmarks use this. Two categories: ``fabric`` (a woven texture) and ``washer`` (a ring
object on a plain background), each with defects ``scratch`` (a dark stroke) and ``spot`` (a
coloured blob) pasted in, and masks that are exactly the painted pixels. Images are W x H =
160 x 128 by default, so the model's squash resize is always exercised. The same arguments give
byte-identical files.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipad.core.owned import FolderKind, staged
from clipad.core.values import SEED, Bounds

CATEGORIES = ("fabric", "washer")
DEFECTS = ("scratch", "spot")
_FILES = re.compile(
    rf"({'|'.join(CATEGORIES)})/(train/good/\d{{3,}}\.png|test/(good|{'|'.join(DEFECTS)})/\d{{3,}}\.png"
    rf"|ground_truth/({'|'.join(DEFECTS)})/\d{{3,}}_mask\.png)"
)
SYNTH = FolderKind("synth", lambda rel: _FILES.fullmatch(rel) is not None)  # what --force may replace


def _fabric(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = rng.uniform(6, 9)
    phase = rng.uniform(0, 2 * np.pi, size=2)
    weave = np.sin(2 * np.pi * xx / period + phase[0]) * np.sin(2 * np.pi * yy / period + phase[1])
    base = np.array([150, 120, 90], np.float32) + rng.normal(0, 4, 3)
    img = base[None, None, :] + 25 * weave[..., None] + rng.normal(0, 6, (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _washer(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array([40, 60, 70], np.float32) + rng.normal(0, 3, 3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w / 2 + rng.uniform(-6, 6), h / 2 + rng.uniform(-6, 6)
    r = np.hypot(xx - cx, yy - cy)
    outer, inner = 0.38 * min(w, h) + rng.uniform(-3, 3), 0.17 * min(w, h) + rng.uniform(-2, 2)
    ring = (r < outer) & (r > inner)
    shade = 170 + 40 * np.cos((xx - cx) / outer * 1.5)
    img[ring] = np.stack([shade, shade, shade * 0.95], -1)[ring]
    img += rng.normal(0, 4, (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _defect_mask(rng: np.random.Generator, kind: str, w: int, h: int, scale: float = 1.0) -> np.ndarray:
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy = rng.uniform(0.3 * w, 0.7 * w), rng.uniform(0.3 * h, 0.7 * h)
    if kind == "scratch":
        ang = rng.uniform(0, np.pi)
        length = min(rng.uniform(0.2, 0.35) * scale, 0.8) * min(w, h)
        dx, dy = np.cos(ang) * length / 2, np.sin(ang) * length / 2
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=int(rng.integers(3, 6) * scale))
    else:
        rx, ry = rng.uniform(5, 11) * scale, rng.uniform(5, 11) * scale
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    return np.asarray(mask) > 0


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, kind: str) -> np.ndarray:
    colour = np.array([25, 20, 20], np.float32) if kind == "scratch" else np.array([200, 60, 40], np.float32)
    out = img.astype(np.float32)
    out[mask] = colour + rng.normal(0, 5, (int(mask.sum()), 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, optimize=False)


def sample_images(n: int, width: int = 160, height: int = 128, seed: int = 0) -> list[np.ndarray]:
    """n in-memory uint8 RGB images [height, width, 3], alternating categories, each with a defect."""
    rng = np.random.default_rng([seed, 99])
    out = []
    for i in range(n):
        make = _fabric if i % 2 == 0 else _washer
        kind = DEFECTS[(i // 2) % len(DEFECTS)]
        out.append(_paint(rng, make(rng, width, height), _defect_mask(rng, kind, width, height), kind))
    return out


def make_synthetic(
    out: str | Path,
    n_train: int = 4,
    n_good: int = 6,
    n_defect: int = 4,
    width: int = 160,
    height: int = 128,
    seed: int = 0,
    force: bool = False,
    defect_scale: float = 1.0,
) -> dict[str, int]:
    """Write the dataset to ``out`` (atomically: built in a staging folder, then swapped in).

    ``out`` must be new, empty or, with ``force``, a dataset this function wrote and nothing else
    (``clipad.core.owned``); anything else is refused in one line.

    ``defect_scale`` enlarges the pasted defects (1 = the default sizes). Returns the number of
    test images per category.
    """
    for flag, value, low in (("--n-train", n_train, 0), ("--n-good", n_good, 1), ("--n-defect", n_defect, 1)):
        Bounds(low, 100_000, integer=True, why="images per category").parse(value, flag)
    for flag, value in (("--width", width), ("--height", height)):
        Bounds(32, 4096, integer=True, why="pixels").parse(value, flag)
    SEED.parse(seed, "--seed")
    counts = {}
    with staged(out, SYNTH, force=force) as tmp:
        for ci, cat in enumerate(CATEGORIES):
            rng = np.random.default_rng([seed, ci])
            make = _fabric if cat == "fabric" else _washer
            root = tmp / cat
            for i in range(n_train):
                _save(make(rng, width, height), root / "train" / "good" / f"{i:03d}.png")
            for i in range(n_good):
                _save(make(rng, width, height), root / "test" / "good" / f"{i:03d}.png")
            for kind in DEFECTS:
                for i in range(n_defect):
                    mask = _defect_mask(rng, kind, width, height, defect_scale)
                    _save(_paint(rng, make(rng, width, height), mask, kind), root / "test" / kind / f"{i:03d}.png")
                    _save((mask * 255).astype(np.uint8), root / "ground_truth" / kind / f"{i:03d}_mask.png")
            counts[cat] = n_good + n_defect * len(DEFECTS)
    return counts


def describe_synthetic(counts: dict[str, int], out: str | Path) -> str:
    """The line `clipad synth` prints for the ``counts`` (test images per category) written to ``out``."""
    return f"wrote {sum(counts.values())} test images in {len(counts)} categories ({', '.join(counts)}) to {out}"
