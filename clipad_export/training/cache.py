"""The SDP+ feature cache: the frozen backbone's outputs for a training or validation set.

CLIP stays frozen during SDP+ training (method.md section 7.3), so the backbone runs once per
image: the raw residual taps' patch tokens (the heads' only input, section 7.1) are stored as
float16 (or float32) memory maps, keyed by model, weights, image size and the file list.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipad.core.choices import CacheDtype, parse_choice
from clipad.core.progress import Tasks
from clipad.data import Sample, load_batch
from clipad.model.loading import LoadedModel
from clipad.model.preprocess import normalize
from clipad.model.sdp import feature_surgery, image_prob
from clipad.model.surgery import N_STAGES, DualPathViT


def data_key(loaded: LoadedModel, samples: list[Sample]) -> str:
    """Identifies a feature cache: model, weights, resolution and every file (path, size, mtime)."""
    h = hashlib.sha256()
    h.update(json.dumps([loaded.spec.model, loaded.spec.describe(), loaded.weights_sha256, loaded.image_size]).encode())
    for s in samples:
        for p in (s.image, s.mask):
            if p is not None:
                st = Path(p).stat()
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}|{s.label}|{s.category}".encode())
    return h.hexdigest()[:24]


class FeatureCache:
    """ori patch tokens float16 (or float32) [N, 4, P, W], masks uint8 [N, S, S], category ids int16 [N];
    a validation cache also holds the summed feature-surgery maps float32 [N, g, g] (``sims``) and
    image_prob float32 [N] (``probs``), None otherwise."""

    def __init__(self, root: Path):
        self.root = root
        self.meta = json.loads((root / "meta.json").read_text())
        self.ori = np.load(root / "ori.npy", mmap_mode="r")
        self.masks = np.load(root / "masks.npy", mmap_mode="r")
        self.cats = np.load(root / "cats.npy")
        self.sims = np.load(root / "sims.npy") if (root / "sims.npy").is_file() else None
        self.probs = np.load(root / "probs.npy") if (root / "probs.npy").is_file() else None

    @classmethod
    def get_or_build(
        cls,
        loaded: LoadedModel,
        samples: list[Sample],
        categories: list[str],
        cache_dir: Path,
        tasks: Tasks,
        batch_size: int = 8,
        texts: torch.Tensor | None = None,
        dtype: str = "float16",
    ) -> tuple[FeatureCache, bool]:
        """Reuse the cache with this key, or build it (atomically); returns (cache, built).

        float16 is the default: training from it matches a float32 cache (docs/benchmarks.md).

        With ``texts`` ([n_categories, D, 2]) it also stores what validation needs besides the
        taps: the summed feature-surgery patch map [N, g, g] and image_prob [N].
        """
        parse_choice(CacheDtype, dtype, "--cache-dtype")
        key = data_key(loaded, samples) + ("" if dtype == "float16" else f"-{dtype}")
        if texts is not None:
            key += "-val" + hashlib.sha256(texts.cpu().numpy().tobytes()).hexdigest()[:8]
        root = cache_dir / key
        if (root / "meta.json").is_file():
            return cls(root), False
        visual: Any = loaded.clip.visual  # open_clip's VisionTransformer (no type stubs)
        vit = DualPathViT(visual)
        size, width, grid = loaded.image_size, vit.width, vit.grid
        stage = cache_dir / f"{key}.partial"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        skipped: list[str] = []
        total = len(samples)  # rows for every sample; unreadable ones are skipped, n counts the rest
        ori = np.lib.format.open_memmap(
            stage / "ori.npy", mode="w+", dtype=dtype, shape=(total, N_STAGES, grid * grid, width)
        )
        masks = np.lib.format.open_memmap(stage / "masks.npy", mode="w+", dtype=np.uint8, shape=(total, size, size))
        kept_all: list[Sample] = []
        sims = np.zeros((total, grid, grid), np.float32) if texts is not None else None
        probs = np.zeros((total,), np.float32) if texts is not None else None
        advance = tasks.add("features (backbone, once)", total)
        device = loaded.device
        with torch.no_grad():
            for start in range(0, total, batch_size):
                imgs, chunk, ms = load_batch(samples[start : start + batch_size], size, skipped)
                advance(min(batch_size, total - start))
                if not chunk:
                    continue
                i = len(kept_all)
                kept_all.extend(chunk)
                x = normalize(torch.from_numpy(np.stack(imgs)).to(device), loaded.mean, loaded.std)
                taps = vit(x, project=False)
                ori[i : i + len(chunk)] = taps.ori[:, :, 1:].to(getattr(torch, dtype)).cpu().numpy()
                if texts is not None:
                    assert sims is not None and probs is not None  # allocated when texts is given
                    surgery = vit.project(taps.surgery)
                    for k, s in enumerate(chunk):
                        t = texts[categories.index(s.category)]
                        sims[i + k] = feature_surgery(surgery[k : k + 1], t).reshape(grid, grid).cpu().numpy()
                        probs[i + k] = float(image_prob(surgery[k : k + 1], t))
                masks[i : i + len(chunk)] = np.stack(
                    [m if m is not None else np.zeros((size, size), bool) for m in ms]
                ).astype(np.uint8)
        ori.flush()
        masks.flush()
        n = len(kept_all)
        np.save(stage / "cats.npy", np.array([categories.index(s.category) for s in kept_all], dtype=np.int16))
        if texts is not None:
            assert sims is not None and probs is not None
            np.save(stage / "sims.npy", sims[:n])
            np.save(stage / "probs.npy", probs[:n])
        (stage / "meta.json").write_text(
            json.dumps(
                {
                    "key": key,
                    "n": n,
                    "categories": categories,
                    "skipped": skipped,
                    "model": loaded.spec.model,
                    "weights": loaded.spec.describe(),
                }
            )
        )
        stage.rename(root)
        return cls(root), True
