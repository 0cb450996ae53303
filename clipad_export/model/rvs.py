"""Representative Vector Selection: prompt embeddings -> the category's text matrix T [D, 2].

method.md section 3.3. Per state group: encode every sentence, L2-normalise the rows E [N, D],
reduce E to one vector with the chosen method, L2-normalise it; T = [r_normal, r_abnormal].

Methods and their official numerics:
- mean: the row mean (float32 here; the official GPU run is fp16 under autocast).
- pca: NOT textbook PCA. With X = E^T [D, N], each prompt (column) is centred over its D
  channels, the top eigenvector u of the N x N Gram matrix (sorted by |eigenvalue|) gives
  r = X_c u; the sign is flipped when <mean(E), r> < 0. Stored in fp16.
- kde: Gaussian KernelDensity(bandwidth=0.3) fitted and scored on E; weights exp(log-density)
  (computed as a softmax, which float32 needs); r = weighted mean. fp16.
- dbscan: DBSCAN(eps, min_samples) on E, eps 1.5 / min_samples 25 for VisA, 0.5 / 15 for all
  other datasets; r = mean of the largest cluster (ties: lowest label). fp16. When every point
  is noise the official code crashes; we fall back to mean and record it.
- mean_shift: MeanShift(bandwidth=2), mean of the largest cluster, fp16 (on unit vectors this is
  always one cluster, so it equals mean up to rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clipad.core.choices import RvsMethod, parse_choice
from clipad.model.prompts import PROMPT_SETS, PromptSet

DEFAULT_METHOD = "dbscan"


@dataclass(frozen=True)
class RVSResult:
    """vector: float32 [D], unit norm. ``used`` differs from ``method`` when a fallback was taken."""

    vector: np.ndarray
    method: str
    used: str
    note: str | None = None


def dbscan_params(dataset: str) -> tuple[float, int]:
    """(eps, min_samples): the official code keys them on dataset == 'visa' only."""
    return (1.5, 25) if dataset.lower() == "visa" else (0.5, 15)


def _unit_fp16(r: np.ndarray) -> np.ndarray:
    """Cast to fp16 and normalise in fp16, as the official code stores these methods' vectors."""
    r16 = np.asarray(r, dtype=np.float16)
    norm = np.float16(np.linalg.norm(r16.astype(np.float32)))
    return (r16 / norm).astype(np.float32)


def _unit(r: np.ndarray) -> np.ndarray:
    r = np.asarray(r, dtype=np.float32)
    return r / np.linalg.norm(r)


def _largest_cluster_mean(e: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    kept = labels[labels >= 0]
    if kept.size == 0:
        return None
    biggest = int(np.argmax(np.bincount(kept)))  # ties -> lowest label id
    return e[labels == biggest].mean(axis=0)


def pca_vector(e: np.ndarray) -> np.ndarray:
    """The official 'pca' direction (unnormalised, before fp16): X_c u with the sign fix."""
    x = e.T  # [D, N]: channels play the role of samples
    xc = x - x.mean(axis=0, keepdims=True)
    vals, vecs = np.linalg.eig(xc.T @ xc)
    u = np.real(vecs[:, np.argsort(-np.abs(vals))[0]])
    r = (xc @ u).astype(np.float16)
    if float(np.dot(e.mean(axis=0), r.astype(np.float32))) < 0:
        r = -r
    return r


def representative_vector(e: np.ndarray, method: str = DEFAULT_METHOD, dataset: str = "mvtec") -> RVSResult:
    """Reduce unit rows e: float32 [N, D] to one unit vector [D] with ``method``."""
    from sklearn.cluster import DBSCAN, MeanShift
    from sklearn.neighbors import KernelDensity

    e = np.asarray(e, dtype=np.float32)
    if method == "mean":
        return RVSResult(_unit(e.mean(axis=0)), method, "mean")
    if method == "pca":
        return RVSResult(_unit_fp16(pca_vector(e)), method, "pca")
    if method == "kde":
        logd = KernelDensity(kernel="gaussian", bandwidth=0.3).fit(e).score_samples(e)
        w = np.exp(logd - logd.max())
        return RVSResult(_unit_fp16((w[:, None] * e).sum(axis=0) / w.sum()), method, "kde")
    if method == "dbscan":
        eps, min_samples = dbscan_params(dataset)
        r = _largest_cluster_mean(e, DBSCAN(eps=eps, min_samples=min_samples).fit(e).labels_)
        if r is None:
            note = f"DBSCAN(eps={eps}, min_samples={min_samples}) labelled all {len(e)} prompts noise; used mean"
            return RVSResult(_unit(e.mean(axis=0)), method, "mean", note)
        return RVSResult(_unit_fp16(r), method, "dbscan")
    if method == "mean_shift":
        r = _largest_cluster_mean(e, MeanShift(bandwidth=2).fit(e).labels_)
        assert r is not None  # MeanShift labels every point
        return RVSResult(_unit_fp16(r), method, "mean_shift")
    parse_choice(RvsMethod, method, "--rvs")
    raise AssertionError(f"RVS method {method} has no implementation")


@torch.no_grad()
def encode_sentences(
    clip: Any,  # open_clip's CLIP, an nn.Module (open_clip ships no type stubs)
    tokenizer: Callable[[list[str]], torch.Tensor],
    sentences: list[str],
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """CLIP text embeddings, L2-normalised: float32 [N, D]. ``on_batch(n)`` reports progress."""
    device = next(clip.parameters()).device
    out = []
    for i in range(0, len(sentences), batch_size):
        chunk = sentences[i : i + batch_size]
        emb = clip.encode_text(tokenizer(chunk).to(device)).float()
        out.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
        if on_batch is not None:
            on_batch(len(chunk))
    return torch.cat(out).numpy()


@dataclass(frozen=True)
class TextVectors:
    """matrix: float32 [D, 2], column 0 normal, column 1 abnormal; plus how it was made."""

    matrix: np.ndarray
    object_name: str
    method: str
    prompt_set: str
    normal: RVSResult
    abnormal: RVSResult

    def summary(self) -> dict:
        return {
            "object_name": self.object_name,
            "method": self.method,
            "prompt_set": self.prompt_set,
            "used": [self.normal.used, self.abnormal.used],
            "notes": [n for n in (self.normal.note, self.abnormal.note) if n],
        }


def text_vectors(
    clip: torch.nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    object_name: str,
    method: str = DEFAULT_METHOD,
    dataset: str = "mvtec",
    prompt_set: PromptSet = PROMPT_SETS["industrial"],
    on_batch: Callable[[int], None] | None = None,
) -> TextVectors:
    """The per-category text matrix T; ``dataset`` only selects the DBSCAN profile."""
    parse_choice(RvsMethod, method, "--rvs")
    normal, abnormal = prompt_set.sentences(object_name)
    e = encode_sentences(clip, tokenizer, normal + abnormal, on_batch=on_batch)
    rn = representative_vector(e[: len(normal)], method, dataset)
    ra = representative_vector(e[len(normal) :], method, dataset)
    return TextVectors(np.stack([rn.vector, ra.vector], axis=1), object_name, method, prompt_set.name, rn, ra)


def n_sentences(prompt_set: PromptSet) -> int:
    return (len(prompt_set.normal) + len(prompt_set.abnormal)) * len(prompt_set.templates)
