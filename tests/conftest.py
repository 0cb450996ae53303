"""Shared fixtures: the tiny registered ViT with every parameter randomised, and the synthetic set."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an offline download otherwise retries for ~47 s

import pytest
import torch

from clipad.data.synth import make_synthetic
from clipad.model.loading import TINY_MODEL, LoadedModel, WeightSpec, load_model

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny() -> LoadedModel:
    return load_model(WeightSpec(model=TINY_MODEL, random_weights=True, seed=1))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "synth"
    make_synthetic(root, n_train=1, n_good=3, n_defect=2)
    return root


@pytest.fixture
def uint8_images():
    def make(n: int, size: int, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)

    return make
