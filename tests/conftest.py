"""Shared fixtures: the tiny registered ViT with every parameter randomised, and the synthetic set."""

from __future__ import annotations

import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an offline download otherwise retries for ~47 s

import pytest
import torch

from clipad.core.progress import Tasks
from clipad.data.synth import make_synthetic
from clipad.deploy.export import ExportConfig, export
from clipad.model.loading import TINY_MODEL, LoadedModel, WeightSpec, load_model
from clipad.model.prompts import PROMPT_SETS
from tests.helpers import TINY

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


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny):
    """The tiny model exported for the runtime tests (FP32, max batch 4); modules may define their own."""
    cfg = ExportConfig(
        category="washer",
        out=tmp_path_factory.mktemp("rt") / "art",
        prompts=PROMPT_SETS["industrial"],
        max_batch=4,
        precision="fp32",
    )
    return export(tiny, cfg, Tasks(None))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The calibration tests' set: 200 calibration and 200 held-out good images, and an FP32 export."""
    root = tmp_path_factory.mktemp("cal")
    make_synthetic(root / "s", n_train=400, n_good=4, n_defect=6, seed=3)
    good = sorted((root / "s" / "fabric" / "train" / "good").iterdir())
    for name, files in (("cal", good[:200]), ("held", good[200:])):
        (root / name).mkdir()
        for f in files:
            shutil.copy(f, root / name / f.name)
    from clipad import cli

    assert (
        cli.run(
            [str(a) for a in ("export", "--category", "fabric", "--precision", "fp32", "--out", root / "art", *TINY)]
        )
        == 0
    )
    return root
