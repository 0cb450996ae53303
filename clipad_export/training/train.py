"""`clipad train`: SDP+ heads trained offline on a labelled dataset (method.md section 7.3).

CLIP stays frozen, so the backbone runs once per image: the raw residual taps' patch tokens
(the heads' only input) are cached on disk (clipad.training.cache), and every epoch trains the
four linear heads from the cache. Per stage the loss is focal + dice on the two-way softmax of
the upsampled 100 * cos logits (align_corners=True); the stage losses are summed. Adam, no
shuffling (as the official code). The logits and the validation maps are the reference's own
(clipad.model.sdp: head_logit_diff, AnomalyMaps), so training optimises what `clipad eval`
and the exported graph compute.
Each epoch writes a checkpoint (heads and optimiser state) atomically; ``--resume`` continues
from it and refuses one made with another configuration.

Checkpoint selection: the official protocol keeps the epoch with the best image AUROC on the
*target* test set. clipad instead offers a held-out validation set (``--val-dataset``/``--val-root``):
after every epoch it computes the full SDP+ image and pixel AUROC there, keeps the epoch with
the best image AUROC, and records the rule in the output's metadata; without one it keeps the
last epoch and says so.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipad.core.atomic import atomic_path, write_text_atomic
from clipad.core.errors import ClipadError
from clipad.core.progress import Tasks
from clipad.data import Sample
from clipad.evaluation.metrics import binary_metrics, pixel_metrics
from clipad.methods.sdp_plus import METHOD as SDP_PLUS
from clipad.model.fusion import map_max, transductive_ranges
from clipad.model.heads import Heads, save_heads
from clipad.model.loading import LoadedModel
from clipad.model.maps import apply_separable, as_tensor, bilinear_matrix
from clipad.model.prompts import PROMPT_SETS
from clipad.model.rvs import text_vectors
from clipad.model.sdp import AnomalyMaps, head_logit_diff
from clipad.model.surgery import N_STAGES, DualPathViT
from clipad.training.cache import FeatureCache
from clipad.training.losses import SDPPlusLoss


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
    cache_dtype: str = "float16"

    def fingerprint(self, data_key: str) -> str:
        d = {
            k: v for k, v in asdict(self).items() if k in ("batch_size", "lr", "seed", "rvs", "dataset", "cache_dtype")
        }
        return hashlib.sha256(json.dumps({**d, "data": data_key}, sort_keys=True).encode()).hexdigest()[:16]


@torch.no_grad()
def validate(
    cache: FeatureCache,
    texts: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    size: int,
    sigma: float,
    batch_size: int = 8,
) -> dict:
    """SDP+ metrics of the current heads on a validation cache (per category, then the mean):
    image AUROC of the paper's fused score and pixel AUROC, as `clipad eval` computes them.

    texts: float32 [n_categories, D, 2]; weight: [4, D, W]; bias: [4, D]. Each category's maps
    come from the reference's AnomalyMaps with that category's text and the current heads, fed
    the cached feature-surgery map and patch tokens -> {"image_auroc", "pixel_auroc"} (None
    where no category defines it).
    """
    device = weight.device
    assert cache.sims is not None and cache.probs is not None  # a validation cache holds both
    grid = cache.sims.shape[1]
    masks = np.asarray(cache.masks[: cache.meta["n"]]) > 0
    per_cat = []
    for c in range(len(cache.meta["categories"])):
        idx = np.flatnonzero(cache.cats == c)
        if not len(idx):
            continue
        anomaly_maps = AnomalyMaps(grid, size, sigma, texts[c], Heads(weight, bias)).to(device)
        batches: list[np.ndarray] = []
        for i in range(0, len(idx), batch_size):
            rows = idx[i : i + batch_size]
            patches = torch.from_numpy(np.array(cache.ori[rows], dtype=np.float32)).to(device)
            sim = torch.from_numpy(cache.sims[rows]).to(device)
            batches.append(anomaly_maps(sim, patches).cpu().numpy())
        maps = np.concatenate(batches)
        labels = masks[idx].reshape(len(idx), -1).any(1).astype(int)
        mmax = map_max(maps)
        score = SDP_PLUS.image_score.fuse(cache.probs[idx], mmax, *transductive_ranges(cache.probs[idx], mmax))
        per_cat.append(
            {
                "image_auroc": binary_metrics(labels, score)["auroc"],
                "pixel_auroc": pixel_metrics(masks[idx], maps)["auroc"],
            }
        )

    def mean(k):
        return (
            float(np.mean([r[k] for r in per_cat if r[k] is not None]))
            if any(r[k] is not None for r in per_cat)
            else None
        )  # noqa: E731

    return {"image_auroc": mean("image_auroc"), "pixel_auroc": mean("pixel_auroc")}


def heads_step(
    ori: torch.Tensor,
    target: torch.Tensor,
    text: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    up_ac: torch.Tensor,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> float:
    """One optimiser step on a batch; returns the loss.

    ori: float32 [B, 4, P, W] patch tokens; target: [B, S, S] in {0, 1}; text: per sample
    [B, D, 2]; weight [4, D, W] and bias [4, D]: the heads being trained; up_ac: [S, g]
    (bilinear, align_corners=True). Autocast to float16 when the scaler is enabled (CUDA); the
    loss itself is taken in float32.
    """
    g = up_ac.shape[1]
    with torch.autocast(device_type=ori.device.type, dtype=torch.float16, enabled=scaler.is_enabled()):
        # The loss reads the upsampled logit difference: sigmoid of it is the two-way softmax's
        # anomaly channel, since interpolation is linear (method.md 7.2).
        z = apply_separable(head_logit_diff(ori, weight, bias, text).unflatten(-1, (g, g)), up_ac)
        loss = SDPPlusLoss.apply(z, target)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return float(loss.detach())


def keep_freed_buffers() -> None:
    """Let glibc keep freed map-sized buffers for reuse instead of returning them to the OS.

    Every training step allocates a dozen [B, 4, S, S] maps. Above glibc's mmap threshold each is
    a fresh mapping whose pages fault in again (costly under virtualisation); measured here this
    made the closed-form loss 2x slower. A no-op where glibc's mallopt is not available.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def init_heads(width: int, embed_dim: int, seed: int) -> Heads:
    """PyTorch's default nn.Linear initialisation, seeded."""
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(width, embed_dim) for _ in range(N_STAGES)]
    return Heads(
        torch.stack([layer.weight.detach() for layer in layers]), torch.stack([layer.bias.detach() for layer in layers])
    )


def train(
    loaded: LoadedModel,
    split: dict[str, list[Sample]],
    cfg: TrainConfig,
    tasks: Tasks,
    resume: Path | None = None,
    val_split: dict[str, list[Sample]] | None = None,
    val_dataset: str = "mvtec",
) -> dict:
    """Train the heads and write ``cfg.out`` (safetensors), its checkpoint and its JSON log."""
    keep_freed_buffers()
    samples = [s for cat in split for s in split[cat]]
    if not any(s.label == 1 for s in samples):
        raise ClipadError("the training set has no anomalous images: SDP+ heads need defects with masks")
    if any(s.label == 1 and s.mask is None for s in samples):
        raise ClipadError("the training set has anomalous images without masks: SDP+ heads need pixel labels")
    categories = list(split)
    device = loaded.device
    visual: Any = loaded.clip.visual  # open_clip's VisionTransformer (no type stubs)
    width, embed_dim = visual.conv1.out_channels, visual.proj.shape[1]
    cache_dir = cfg.cache_dir or Path(cfg.out).with_suffix(".cache")
    t0 = time.perf_counter()
    cache, built = FeatureCache.get_or_build(loaded, samples, categories, cache_dir, tasks, dtype=cfg.cache_dtype)
    cache_s = time.perf_counter() - t0
    texts = torch.stack(
        [
            torch.from_numpy(
                text_vectors(loaded.clip, loaded.tokenizer, c, cfg.rvs, cfg.dataset, PROMPT_SETS["industrial"]).matrix
            )
            for c in categories
        ]
    ).to(device)
    up_ac = as_tensor(bilinear_matrix(DualPathViT(visual).grid, loaded.image_size, align_corners=True)).to(device)
    fingerprint = cfg.fingerprint(cache.meta["key"])
    val = None
    if val_split is not None:
        val_cats = list(val_split)
        val_texts = torch.stack(
            [
                torch.from_numpy(
                    text_vectors(
                        loaded.clip, loaded.tokenizer, c, cfg.rvs, val_dataset, PROMPT_SETS["industrial"]
                    ).matrix
                )
                for c in val_cats
            ]
        ).to(device)
        val_cache, _ = FeatureCache.get_or_build(
            loaded, [s for c in val_cats for s in val_split[c]], val_cats, cache_dir, tasks, texts=val_texts
        )
        val = (val_cache, val_texts, SDP_PLUS.default_sigma(val_dataset))  # section 7.3: the validation set's sigma
    best = None  # (image AUROC, epoch, weight, bias)
    heads = init_heads(width, embed_dim, cfg.seed)
    weight = heads.weight.clone().to(device).requires_grad_(True)
    bias = heads.bias.clone().to(device).requires_grad_(True)
    opt = torch.optim.Adam([weight, bias], lr=cfg.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    ckpt_path = Path(cfg.out).with_suffix(".ckpt.pt")
    log_path = Path(cfg.out).with_suffix(".log.json")
    log: dict[str, Any] = {
        "config": {k: str(v) for k, v in asdict(cfg).items()},
        "fingerprint": fingerprint,
        "cache": str(cache.root),
        "cache_built": built,
        "cache_seconds": round(cache_s, 2),
        "epochs": [],
    }
    start_epoch = 0
    if resume is not None:
        try:
            ck = torch.load(resume, map_location=device, weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise ClipadError(f"cannot read resume file {resume}: {str(err).splitlines()[0]}") from None
        if ck.get("fingerprint") != fingerprint:
            raise ClipadError(
                f"resume file {resume} was made with another configuration or data (fingerprint "
                f"{ck.get('fingerprint')} != {fingerprint}); start without --resume"
            )
        with torch.no_grad():
            weight.copy_(ck["weight"])
            bias.copy_(ck["bias"])
        opt.load_state_dict(ck["optimizer"])
        start_epoch = int(ck["epoch"])
        if ck.get("best") and val is not None:
            b = ck["best"]
            best = (float(b["score"]), int(b["epoch"]), b["weight"], b["bias"])
        if log_path.is_file():
            log["epochs"] = json.loads(log_path.read_text()).get("epochs", [])[:start_epoch]
    n = cache.meta["n"]
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        advance = tasks.add(f"epoch {epoch + 1}/{cfg.epochs}", n)
        losses = []
        for i in range(0, n, cfg.batch_size):  # no shuffling, as the official recipe
            ori = torch.from_numpy(np.array(cache.ori[i : i + cfg.batch_size], dtype=np.float32)).to(device)
            target = torch.from_numpy(np.asarray(cache.masks[i : i + cfg.batch_size], dtype=np.float32)).to(device)
            text = texts[torch.from_numpy(cache.cats[i : i + cfg.batch_size].astype(np.int64)).to(device)]
            losses.append(heads_step(ori, target, text, weight, bias, up_ac, opt, scaler))
            advance(len(ori))
        seconds = time.perf_counter() - t0
        entry: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(seconds, 3)}
        if val is not None:
            entry["validation"] = validate(
                val[0], val[1], weight.detach(), bias.detach(), loaded.image_size, val[2], cfg.batch_size
            )
            score = entry["validation"]["image_auroc"] or 0.0
            if best is None or score > best[0]:
                best = (score, epoch + 1, weight.detach().cpu().clone(), bias.detach().cpu().clone())
        log["epochs"].append(entry)
        with atomic_path(ckpt_path) as tmp:
            torch.save(
                {
                    "weight": weight.detach().cpu(),
                    "bias": bias.detach().cpu(),
                    "optimizer": opt.state_dict(),
                    "epoch": epoch + 1,
                    "fingerprint": fingerprint,
                    "best": None
                    if best is None
                    else {"score": best[0], "epoch": best[1], "weight": best[2], "bias": best[3]},
                },
                tmp,
            )
        write_text_atomic(log_path, json.dumps(log, indent=2) + "\n")
    final_w, final_b, selection = weight.detach().cpu(), bias.detach().cpu(), "last epoch (no validation set)"
    if best is not None:
        assert val is not None  # best is only ever set with a validation set
        final_w, final_b = best[2], best[3]
        selection = (
            f"best validation image AUROC ({best[0]:.4f}) at epoch {best[1]} "
            f"on a held-out set ({', '.join(val[0].meta['categories'])})"
        )
        log["selected_epoch"] = best[1]
    out = Heads(
        final_w,
        final_b,
        {
            "model": loaded.spec.model,
            "weights": loaded.spec.describe(),
            "taps": "X_mid of stage-start blocks 2-4 and X_L (method.md 4.4)",
            "training_data": json.dumps({c: len(split[c]) for c in categories}),
            "epochs": str(cfg.epochs),
            "selection": selection,
            "rvs": cfg.rvs,
            "fingerprint": fingerprint,
            "validation": json.dumps([e.get("validation") for e in log["epochs"]]),
        },
    )
    save_heads(cfg.out, out)
    write_text_atomic(log_path, json.dumps(log, indent=2) + "\n")
    return log
