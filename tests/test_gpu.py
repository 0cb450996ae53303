"""The reference on a CUDA GPU against the same model on the CPU.

These run only where torch sees a CUDA GPU (scripts/gpu_check.py runs them there); CI has none.
"""

from __future__ import annotations

import pytest
import torch

from clipad.model.loading import TINY_MODEL, WeightSpec, load_model
from clipad.model.sdp import SDPModel

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU; CI and the build machines have none"
)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("model_name", [TINY_MODEL, "ViT-B-16-plus-240"])
def test_cuda_fp32_matches_cpu(model_name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    spec = WeightSpec(model=model_name, random_weights=True, seed=2)
    cpu = load_model(spec, "cpu")
    gpu = load_model(spec, "cuda")
    text = torch.nn.functional.normalize(torch.randn(cpu.clip.visual.proj.shape[1], 2), dim=0)
    x = torch.randint(
        0, 256, (2, cpu.image_size, cpu.image_size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        m_cpu, p_cpu = SDPModel(cpu.clip.visual, text, cpu.image_size)(x)
        m_gpu, p_gpu = SDPModel(gpu.clip.visual, text, gpu.image_size)(x.cuda())
    assert rel_l2(m_gpu.cpu(), m_cpu) < 1e-4
    assert (p_gpu.cpu() - p_cpu).abs().max() < 1e-4


def test_fp16_autocast_stays_close_to_fp32():
    loaded = load_model(WeightSpec(model=TINY_MODEL, random_weights=True, seed=2), "cuda")
    text = torch.nn.functional.normalize(torch.randn(loaded.clip.visual.proj.shape[1], 2), dim=0).cuda()
    model = SDPModel(loaded.clip.visual, text, loaded.image_size)
    x = torch.randint(0, 256, (4, loaded.image_size, loaded.image_size, 3), dtype=torch.uint8, device="cuda")
    with torch.no_grad():
        ref, _ = model(x)
        half, _ = model.forward_fp16(x)
    assert half.dtype == torch.float32
    assert rel_l2(half, ref) < 5e-2


def test_training_on_cuda_uses_amp_and_learns(tmp_path):
    """SDP+ training on CUDA runs under autocast with a gradient scaler and ends close to the
    same training in FP32 on the CPU (same data, seed and epochs)."""
    from clipad.core.progress import Tasks
    from clipad.data import load_split
    from clipad.data.synth import make_synthetic
    from clipad.model.heads import load_heads
    from clipad.training.train import TrainConfig, train

    make_synthetic(tmp_path / "d", n_train=0, n_good=4, n_defect=6, seed=0, defect_scale=3)
    split = load_split("mvtec", tmp_path / "d")
    spec = WeightSpec(model=TINY_MODEL, random_weights=True, seed=1)
    logs = {}
    for device in ("cuda", "cpu"):
        cfg = TrainConfig(
            out=tmp_path / f"{device}.safetensors", epochs=10, lr=1e-3, cache_dir=tmp_path / f"c-{device}"
        )
        logs[device] = train(load_model(spec, device), split, cfg, Tasks(None))
    losses = [e["loss"] for e in logs["cuda"]["epochs"]]
    assert losses[-1] < losses[0]
    assert abs(losses[-1] - logs["cpu"]["epochs"][-1]["loss"]) < 0.05 * logs["cpu"]["epochs"][-1]["loss"]
    gpu, cpu = (load_heads(tmp_path / f"{d}.safetensors", 64, 64) for d in ("cuda", "cpu"))
    assert rel_l2(gpu.weight, cpu.weight) < 0.05
