"""`clipad train`: SDP+ heads trained offline on a labelled dataset (method.md section 7.3).

CLIP stays frozen, so the backbone runs once per image: the raw residual taps' patch tokens
(the heads' only input) are cached on disk as float16 memory maps, keyed by model, weights,
image size and the file list, and every epoch trains the four linear heads from the cache.
Per stage the loss is focal + dice on the two-way softmax of the upsampled 100 * cos logits
(align_corners=True); the stage losses are summed. Adam, no shuffling (as the official code).
Each epoch writes a checkpoint (heads and optimiser state) atomically; ``--resume`` continues
from it and refuses one made with another configuration.

Not yet here (see the training issue): validation-based checkpoint selection (--val-*), and
the official protocol's selection on the target test set is not offered either: the output is
the last epoch's heads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .atomic import atomic_path, write_text_atomic
from .data import Sample
from .errors import ClipadError
from .heads import Heads, save_heads
from .losses import dice_loss, focal_loss
from .maps import apply_separable, as_tensor, bilinear_matrix
from .models import LoadedModel
from .preprocess import ImageReadError, load_mask, normalize, read_image, resize_to_model
from .progress import Tasks
from .prompts import PROMPT_SETS
from .rvs import text_vectors
from .sdp import LOGIT_SCALE
from .surgery import N_STAGES, DualPathViT


@dataclass
class TrainConfig:
    out: Path
    epochs: int = 5
    batch_size: int = 8
    lr: float = 1e-4
    seed: int = 42
    rvs: str = "dbscan"
    dataset: str = "mvtec"
    cache_dir: Path | None = None

    def fingerprint(self, data_key: str) -> str:
        d = {k: v for k, v in asdict(self).items() if k in ("batch_size", "lr", "seed", "rvs", "dataset")}
        return hashlib.sha256(json.dumps({**d, "data": data_key}, sort_keys=True).encode()).hexdigest()[:16]


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
    """ori patch tokens float16 [N, 4, P, W], masks uint8 [N, S, S], category ids int16 [N]."""

    def __init__(self, root: Path):
        self.root = root
        self.meta = json.loads((root / "meta.json").read_text())
        self.ori = np.load(root / "ori.npy", mmap_mode="r")
        self.masks = np.load(root / "masks.npy", mmap_mode="r")
        self.cats = np.load(root / "cats.npy")

    @classmethod
    def get_or_build(cls, loaded: LoadedModel, samples: list[Sample], categories: list[str], cache_dir: Path,
                     tasks: Tasks, batch_size: int = 8) -> tuple["FeatureCache", bool]:
        """Reuse the cache with this key, or build it (atomically); returns (cache, built)."""
        key = data_key(loaded, samples)
        root = cache_dir / key
        if (root / "meta.json").is_file():
            return cls(root), False
        vit = DualPathViT(loaded.clip.visual)
        size, width, grid = loaded.image_size, vit.width, vit.grid
        stage = cache_dir / f"{key}.partial"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
        readable, skipped = [], []
        for s in samples:
            try:
                read_image(s.image)
                readable.append(s)
            except ImageReadError as err:
                skipped.append(str(err))
        n = len(readable)
        ori = np.lib.format.open_memmap(stage / "ori.npy", mode="w+", dtype=np.float16, shape=(n, N_STAGES, grid * grid, width))
        masks = np.lib.format.open_memmap(stage / "masks.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
        cats = np.array([categories.index(s.category) for s in readable], dtype=np.int16)
        advance = tasks.add("features (backbone, once)", n)
        device = loaded.device
        with torch.no_grad():
            for i in range(0, n, batch_size):
                chunk = readable[i : i + batch_size]
                imgs, ms = [], []
                for s in chunk:
                    pil = read_image(s.image)
                    imgs.append(resize_to_model(pil, size))
                    ms.append(load_mask(s.mask, size, pil.size) if s.mask is not None else np.zeros((size, size), bool))
                x = normalize(torch.from_numpy(np.stack(imgs)).to(device), loaded.mean, loaded.std)
                taps = vit(x, project=False)
                ori[i : i + len(chunk)] = taps.ori[:, :, 1:].to(torch.float16).cpu().numpy()
                masks[i : i + len(chunk)] = np.stack(ms).astype(np.uint8)
                advance(len(chunk))
        ori.flush()
        masks.flush()
        np.save(stage / "cats.npy", cats)
        (stage / "meta.json").write_text(json.dumps({"key": key, "n": n, "categories": categories, "skipped": skipped,
                                                     "model": loaded.spec.model, "weights": loaded.spec.describe()}))
        stage.rename(root)
        return cls(root), True


def stage_probabilities(ori: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, text: torch.Tensor,
                        up_ac: torch.Tensor) -> torch.Tensor:
    """Anomaly probability per stage at image resolution.

    ori: [B, 4, P, W] patch tokens; weight [4, D, W]; bias [4, D]; text: per-sample [B, D, 2];
    up_ac: [S, g] -> [B, 4, S, S] (sigmoid of the upsampled logit difference = two-way softmax).
    """
    u = F.normalize(torch.einsum("bspw,sdw->bspd", ori, weight) + bias[None, :, None, :], dim=-1)
    logits = LOGIT_SCALE * torch.einsum("bspd,bdk->bspk", u, text)
    b, s, p = logits.shape[:3]
    g = int(round(p ** 0.5))
    diff = (logits[..., 1] - logits[..., 0]).reshape(b, s, g, g)
    return torch.sigmoid(apply_separable(diff, up_ac))


def sdp_plus_loss(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over stages of focal (two-channel) + dice (anomaly channel); probs [B, 4, S, S]."""
    total = probs.new_zeros(())
    for j in range(probs.shape[1]):
        a = probs[:, j]
        total = total + focal_loss(torch.stack([1 - a, a], dim=1), target) + dice_loss(a, target)
    return total


def init_heads(width: int, embed_dim: int, seed: int) -> Heads:
    """PyTorch's default nn.Linear initialisation, seeded."""
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(width, embed_dim) for _ in range(N_STAGES)]
    return Heads(torch.stack([l.weight.detach() for l in layers]), torch.stack([l.bias.detach() for l in layers]))


def train(loaded: LoadedModel, split: dict[str, list[Sample]], cfg: TrainConfig, tasks: Tasks,
          resume: Path | None = None) -> dict:
    """Train the heads and write ``cfg.out`` (safetensors), its checkpoint and its JSON log."""
    samples = [s for cat in split for s in split[cat]]
    if not any(s.label == 1 for s in samples):
        raise ClipadError("the training set has no anomalous images: SDP+ heads need defects with masks")
    if any(s.label == 1 and s.mask is None for s in samples):
        raise ClipadError("the training set has anomalous images without masks: SDP+ heads need pixel labels")
    categories = list(split)
    device = loaded.device
    visual = loaded.clip.visual
    width, embed_dim = visual.conv1.out_channels, visual.proj.shape[1]
    cache_dir = cfg.cache_dir or Path(cfg.out).with_suffix(".cache")
    t0 = time.perf_counter()
    cache, built = FeatureCache.get_or_build(loaded, samples, categories, cache_dir, tasks)
    cache_s = time.perf_counter() - t0
    texts = torch.stack([torch.from_numpy(text_vectors(loaded.clip, loaded.tokenizer, c, cfg.rvs, cfg.dataset,
                                                       PROMPT_SETS["industrial"]).matrix) for c in categories]).to(device)
    up_ac = as_tensor(bilinear_matrix(DualPathViT(visual).grid, loaded.image_size, align_corners=True)).to(device)
    fingerprint = cfg.fingerprint(cache.meta["key"])
    heads = init_heads(width, embed_dim, cfg.seed)
    weight = heads.weight.clone().to(device).requires_grad_(True)
    bias = heads.bias.clone().to(device).requires_grad_(True)
    opt = torch.optim.Adam([weight, bias], lr=cfg.lr)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    ckpt_path = Path(cfg.out).with_suffix(".ckpt.pt")
    log_path = Path(cfg.out).with_suffix(".log.json")
    log = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "fingerprint": fingerprint, "cache": str(cache.root),
           "cache_built": built, "cache_seconds": round(cache_s, 2), "epochs": []}
    start_epoch = 0
    if resume is not None:
        try:
            ck = torch.load(resume, map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise ClipadError(f"cannot read resume file {resume}: {str(err).splitlines()[0]}") from None
        if ck.get("fingerprint") != fingerprint:
            raise ClipadError(f"resume file {resume} was made with another configuration or data (fingerprint "
                              f"{ck.get('fingerprint')} != {fingerprint}); start without --resume")
        with torch.no_grad():
            weight.copy_(ck["weight"])
            bias.copy_(ck["bias"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch = int(ck["epoch"])
        if log_path.is_file():
            log["epochs"] = json.loads(log_path.read_text()).get("epochs", [])[:start_epoch]
    n = cache.meta["n"]
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        advance = tasks.add(f"epoch {epoch + 1}/{cfg.epochs}", n)
        losses = []
        for i in range(0, n, cfg.batch_size):  # no shuffling, as the official recipe
            ori = torch.from_numpy(np.asarray(cache.ori[i : i + cfg.batch_size], dtype=np.float32)).to(device)
            target = torch.from_numpy(np.asarray(cache.masks[i : i + cfg.batch_size], dtype=np.float32)).to(device)
            text = texts[torch.from_numpy(cache.cats[i : i + cfg.batch_size].astype(np.int64)).to(device)]
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                probs = stage_probabilities(ori, weight, bias, text, up_ac)
            loss = sdp_plus_loss(probs.float(), target)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
            advance(len(ori))
        seconds = time.perf_counter() - t0
        log["epochs"].append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(seconds, 3)})
        with atomic_path(ckpt_path) as tmp:
            torch.save({"weight": weight.detach().cpu(), "bias": bias.detach().cpu(), "optimizer": opt.state_dict(),
                        "epoch": epoch + 1, "fingerprint": fingerprint}, tmp)
        write_text_atomic(log_path, json.dumps(log, indent=2) + "\n")
    out = Heads(weight.detach().cpu(), bias.detach().cpu(), {
        "model": loaded.spec.model, "weights": loaded.spec.describe(), "taps": "X_mid of stage-start blocks 2-4 and X_L (method.md 4.4)",
        "training_data": json.dumps({c: len(split[c]) for c in categories}), "epochs": str(cfg.epochs),
        "selection": "last epoch (no validation set)", "rvs": cfg.rvs, "fingerprint": fingerprint})
    save_heads(cfg.out, out)
    write_text_atomic(log_path, json.dumps(log, indent=2) + "\n")
    return log
