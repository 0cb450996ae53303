"""The default backbone weights and where open_clip keeps them in the Hugging Face cache, without
torch (the loader and `clipad doctor` read them here)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL = "ViT-B-16-plus-240"
DEFAULT_PRETRAINED = "laion400m_e31"
# open_clip's pretrained table for (DEFAULT_MODEL, DEFAULT_PRETRAINED): its ``hf_hub`` entry
# (tests/test_doctor.py checks it against open_clip's own table).
DEFAULT_HF_HUB = "timm/vit_base_patch16_plus_clip_240.laion400m_e31/"
# The files open_clip downloads for an ``hf_hub`` entry that names a repository only, in its order.
HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def cached_hub_file(hub: str, cache_dir: str | Path | None = None) -> str | None:
    """The local file of an open_clip ``hf_hub`` entry ("org/repo/" or "org/repo/file") when the
    Hugging Face cache holds it, else None. Reads the cache only (no network)."""
    from huggingface_hub import try_to_load_from_cache

    if not hub:
        return None
    repo, filename = hub.rstrip("/").rsplit("/", 1) if not hub.endswith("/") else (hub.rstrip("/"), "")
    for name in [filename] if filename else HUB_WEIGHT_FILES:
        found = try_to_load_from_cache(repo, name, cache_dir=str(cache_dir) if cache_dir else None)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


# AnomalyDINO's DINOv2 backbones (the torch.hub names) -> timm's model names; timm keeps the weights
# on the Hugging Face hub as timm/<model>.lvd142m (model.safetensors), torch.hub as
# <hub dir>/checkpoints/<backbone>_pretrain.pth (the official URL's file name).
DINOV2_TIMM = {
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitl14": "vit_large_patch14_dinov2",
}
DINOV2_HF_TAG = "lvd142m"


def torch_hub_dir() -> Path:
    """torch.hub.get_dir()'s default without torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub,
    else ~/.cache/torch/hub."""
    import os

    if home := os.environ.get("TORCH_HOME"):
        return Path(home).expanduser() / "hub"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(cache) / "torch" / "hub"


def dinov2_cached_files(backbone: str, hf_cache: str | Path | None = None) -> list[Path]:
    """The cached weight files of a DINOv2 ``backbone`` that exist, in the order they are used: the
    official checkpoint in the torch.hub cache, timm's ``model.safetensors`` in the Hugging Face
    cache (``hf_cache``: its root; default the library's). Reads the caches only (no network)."""
    from huggingface_hub import try_to_load_from_cache

    out = []
    hub = torch_hub_dir() / "checkpoints" / f"{backbone}_pretrain.pth"
    if hub.is_file():
        out.append(hub)
    repo = f"timm/{DINOV2_TIMM[backbone]}.{DINOV2_HF_TAG}"
    found = try_to_load_from_cache(repo, "model.safetensors", cache_dir=str(hf_cache) if hf_cache else None)
    if isinstance(found, str) and Path(found).is_file():
        out.append(Path(found))
    return out


RANDOM_WEIGHTS_NOTE = "note: random weights give meaningless heatmaps; use them for smoke tests only"
