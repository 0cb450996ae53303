"""The one model-loading path: random, offline file and open_clip tag, and its errors."""

from __future__ import annotations

import time

import pytest
import torch
from safetensors.torch import save_file

from clipad.core.errors import ClipadError
from clipad.model.loading import TINY_MODEL, WeightSpec, load_model


def test_random_weights_are_seeded():
    a = load_model(WeightSpec(model=TINY_MODEL, random_weights=True, seed=7))
    b = load_model(WeightSpec(model=TINY_MODEL, random_weights=True, seed=7))
    c = load_model(WeightSpec(model=TINY_MODEL, random_weights=True, seed=8))
    pa, pb, pc = (m.clip.visual.proj for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    assert a.image_size == 96 and not any(p.requires_grad for p in a.clip.parameters())


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_roundtrip(tiny, tmp_path, suffix):
    state = {k: v.contiguous() for k, v in tiny.clip.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = load_model(WeightSpec(model=TINY_MODEL, weights=path))
    for k, v in loaded.clip.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert loaded.weights_sha256 and len(loaded.weights_sha256) == 64


def test_weights_for_another_model_fail_in_one_line(tiny, tmp_path):
    state = {k: v.contiguous() for k, v in tiny.clip.state_dict().items()}
    state["visual.proj"] = torch.zeros(3, 3)
    del state["logit_scale"]
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ClipadError) as err:
        load_model(WeightSpec(model=TINY_MODEL, weights=tmp_path / "w.safetensors"))
    msg = str(err.value)
    assert "\n" not in msg and "does not fit model clipad-tiny" in msg
    assert "visual.proj: file [3, 3], model [64, 64]" in msg and "missing keys (e.g. logit_scale)" in msg


class _Payload:
    """Stands for arbitrary pickled code, which weights_only=True must refuse."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ClipadError, match="cannot read weights file"):
        load_model(WeightSpec(model=TINY_MODEL, weights=tmp_path / "evil.pt"))


def test_offline_pretrained_fails_fast_and_names_the_options(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ClipadError) as err:
        load_model(WeightSpec(model="ViT-B-16-plus-240", pretrained="laion400m_e31", cache_dir=tmp_path))
    msg = str(err.value)
    assert "--weights FILE" in msg and "--random-weights" in msg and "\n" not in msg
    assert time.perf_counter() - t0 < 30


def test_unknown_model_and_tag():
    with pytest.raises(ClipadError, match="unknown model 'ViT-Nope'"):
        load_model(WeightSpec(model="ViT-Nope", random_weights=True))
    with pytest.raises(ClipadError, match="no pretrained tag 'nope' for ViT-B-16-plus-240"):
        load_model(WeightSpec(pretrained="nope"))


def test_pretrained_accepts_a_local_checkpoint_through_open_clip(tiny, tmp_path):
    """open_clip's own loader (the --pretrained path) on an offline file."""
    path = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.clip.state_dict().items()}, str(path))
    loaded = load_model(WeightSpec(model=TINY_MODEL, pretrained=str(path)))
    assert torch.equal(loaded.clip.visual.proj, tiny.clip.visual.proj)


def test_no_network_fails_within_seconds_without_retry_noise(tmp_path):
    """Without network (here: a hub endpoint on a closed loopback port) and without cached weights,
    `clipad export` fails in one line within seconds, not after a minute of hub retries."""
    import os
    import socket
    import subprocess
    import sys

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "clipad", "export", "--category", "bottle", "--out", str(tmp_path / "a")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1 and time.perf_counter() - t0 < 30
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be reached" in lines[0] and "--weights FILE" in lines[0], proc.stderr
    assert not (tmp_path / "a").exists()
