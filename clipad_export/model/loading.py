"""Loading CLIP models: one path for every weight source (open_clip tag, local file, random).

The tiny test config (`model_configs/clipad-tiny.json`, same ViT family as ViT-B-16-plus-240:
pre-LN blocks, exact GELU, no patch-embed bias, 8 blocks = 4 stages of 2) is registered with
open_clip like any built-in architecture, so tests take the same code path as real models.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.core.values import SEED
from clipad.core.weights import DEFAULT_MODEL, DEFAULT_PRETRAINED, cached_hub_file
from clipad.model.preprocess import OPENAI_MEAN, OPENAI_STD

TINY_MODEL = "clipad-tiny"
_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def _open_clip():
    """Import open_clip and register clipad's own model configs (once)."""
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True
    return open_clip


@dataclass(frozen=True)
class WeightSpec:
    """Where the weights come from; exactly one of pretrained / weights / random_weights is used.

    Precedence: ``random_weights`` > ``weights`` > ``pretrained``.
    """

    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    weights: Path | None = None
    random_weights: bool = False
    seed: int = 0
    cache_dir: Path | None = None

    def checked(self, given: Sequence[str] = ()) -> WeightSpec:
        """This spec, after one-line errors for a bad seed and for options that would be ignored:
        ``given``: the options on the command line (--pretrained, --weights, --cache-dir)."""
        SEED.parse(self.seed, "--seed")
        unused = [f for f in given if f in ("--pretrained", "--weights", "--cache-dir")]
        if self.random_weights and unused:
            raise ClipadError(f"--random-weights loads no weights: {', '.join(unused)} would be ignored; leave it out")
        return self

    def describe(self) -> str:
        if self.random_weights:
            return f"random(seed={self.seed})"
        if self.weights is not None:
            return f"file:{self.weights}"
        return f"open_clip:{self.pretrained}"


@dataclass
class LoadedModel:
    """A CLIP model ready for the reference: eval mode, frozen, on ``device``."""

    clip: nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    spec: WeightSpec
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_sha256: str | None

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device


def available_models() -> list[str]:
    return list(_open_clip().list_models())


def check_model_name(name: str) -> None:
    """One line unless ``name`` is an open_clip architecture (the registered tiny one included)."""
    names = available_models()
    if name not in names:
        hint = ", ".join(n for n in names if "B-16" in n or n == TINY_MODEL)
        raise ClipadError(f"unknown model '{name}' (e.g. {hint}; open_clip.list_models() lists all)")


def randomize_parameters(module: nn.Module, seed: int) -> None:
    """Overwrite *every* parameter with seeded random values, biases and LayerNorm affine included.

    Default init (zero biases, unit LayerNorm gains) hides bugs such as a forgotten bias, so
    tests and smoke runs use this instead. Scales keep activations O(1): matrices ~ N(0, 1/fan_in),
    LayerNorm gains ~ 1 + N(0, 0.1^2), biases and embeddings ~ N(0, 0.1^2).
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(p: torch.Tensor) -> torch.Tensor:
        return torch.randn(p.shape, generator=gen, dtype=torch.float32)

    with torch.no_grad():
        layer_norm_weights = {
            id(m.weight) for m in module.modules() if isinstance(m, nn.LayerNorm) and m.weight is not None
        }
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if id(p) in layer_norm_weights:
                value = 1.0 + 0.1 * randn(p)
            elif leaf == "logit_scale":
                value = torch.full_like(p, math.log(100.0))
            elif (
                p.ndim == 1
                or leaf in ("positional_embedding", "class_embedding", "token_embedding")
                or "embedding" in leaf
            ):
                value = 0.1 * randn(p)
            elif leaf in ("proj", "text_projection"):  # used as x @ P: fan_in is dim 0
                value = randn(p) / math.sqrt(p.shape[0])
            else:  # Linear / Conv / in_proj weights: [out, in, ...]
                value = randn(p) / math.sqrt(p[0].numel())
            p.copy_(value.to(p.dtype))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ClipadError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle refused by weights_only, ...
        raise ClipadError(f"cannot read weights file {path}: {str(err).splitlines()[0]}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClipadError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_state_dict_checked(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, what: str, assign: bool = False
) -> None:
    """Load ``state`` strictly, or fail with one line that says how it does not fit. ``assign``:
    the module's tensors become the state's (a module built on the meta device)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(
                f"{len(mismatched)} shape mismatches "
                f"(e.g. {k}: file {list(state[k].shape)}, model {list(own[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise ClipadError(f"{source} does not fit {what}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True, assign=assign)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ClipadError("--device cuda asked for, but torch sees no CUDA GPU")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ClipadError(f"unknown device '{device}' (use auto, cpu or cuda)") from None


def load_model(spec: WeightSpec, device: str | torch.device = "cpu") -> LoadedModel:
    """Create the open_clip model named by ``spec`` and load its weights.

    Errors (unknown model, no network and no cached weights, a weights file for another model)
    are raised as one-line ClipadErrors that name the weight options.
    """
    open_clip = _open_clip()
    check_model_name(spec.model)
    sha = None
    # open_clip logs a warning for models built without weights (we load them ourselves) and an
    # error before raising on failed downloads (we report those as one line).
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.CRITICAL)
    try:
        if spec.random_weights or spec.weights is not None:
            clip = open_clip.create_model(spec.model, pretrained=None)
        else:
            clip = _create_pretrained(open_clip, spec)
    finally:
        logging.getLogger().setLevel(quiet)
    if spec.random_weights:
        randomize_parameters(clip, spec.seed)
    elif spec.weights is not None:
        path = Path(spec.weights)
        load_state_dict_checked(clip, read_state_dict(path), f"weights file {path}", f"model {spec.model}")
        sha = file_sha256(path)
    clip = clip.to(resolve_device(str(device)) if isinstance(device, str) else device).eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    size = clip.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    cfg: dict[str, Any] = getattr(clip.visual, "preprocess_cfg", None) or {}
    mean = tuple(cfg.get("mean", OPENAI_MEAN))
    std = tuple(cfg.get("std", OPENAI_STD))
    return LoadedModel(
        clip=clip,
        tokenizer=open_clip.get_tokenizer(spec.model),
        spec=spec,
        image_size=size,
        mean=mean,
        std=std,
        weights_sha256=sha,
    )


HUB_PROBE_TIMEOUT_S = 3.0


def _hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face endpoint (``HF_ENDPOINT``, for mirrors) accepts a TCP connection.

    Without it, huggingface_hub retries for about a minute before failing; an air-gapped machine
    should hear at once that it needs ``--weights``."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
        return True
    except OSError:
        return False


def _cached_pretrained(open_clip: Any, spec: WeightSpec) -> str | None:
    """The local file of an open_clip pretrained tag when the Hugging Face cache already holds it."""
    hub = open_clip.get_pretrained_cfg(spec.model, spec.pretrained).get("hf_hub", "")
    return cached_hub_file(hub, spec.cache_dir)


def _create_pretrained(open_clip: Any, spec: WeightSpec) -> nn.Module:
    """open_clip's model with a pretrained tag's weights: from the local cache when it holds them
    (no network at all), else downloaded (huggingface_hub's progress bar on stderr) once the hub
    answers; without network and cache, one line within seconds."""
    tags = open_clip.list_pretrained_tags_by_model(spec.model)
    if spec.pretrained not in tags and not Path(spec.pretrained).is_file():
        known = ", ".join(tags) or "none"
        raise ClipadError(
            f"open_clip has no pretrained tag '{spec.pretrained}' for {spec.model} (known: {known}); "
            "use --weights FILE or --random-weights"
        )
    hint = (
        "Without network pass --weights FILE (an open_clip state dict, .safetensors or .pt), "
        "or --random-weights for a smoke test"
    )
    source = spec.pretrained
    if spec.pretrained in tags:
        source = _cached_pretrained(open_clip, spec) or spec.pretrained
        if source == spec.pretrained:
            if os.environ.get("HF_HUB_OFFLINE"):
                raise ClipadError(
                    f"pretrained weights '{spec.pretrained}' for {spec.model} are not cached and "
                    f"HF_HUB_OFFLINE is set. {hint}"
                )
            if not _hub_reachable():
                raise ClipadError(
                    f"pretrained weights '{spec.pretrained}' for {spec.model} are not cached and the "
                    f"Hugging Face hub cannot be reached (no network?). {hint}"
                )
    try:
        return open_clip.create_model(
            spec.model, pretrained=source, cache_dir=str(spec.cache_dir) if spec.cache_dir else None
        )
    except Exception as err:
        cause = str(err).split(". ")[0][:160]
        raise ClipadError(
            f"could not get pretrained weights '{spec.pretrained}' for {spec.model} ({cause}). {hint}"
        ) from None
