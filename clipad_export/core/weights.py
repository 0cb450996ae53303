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


RANDOM_WEIGHTS_NOTE = "note: random weights give meaningless heatmaps; use them for smoke tests only"
