"""The reference on a CUDA GPU against the same model on the CPU.

These run only where torch sees a CUDA GPU (scripts/gpu_check.py runs them there); CI has none.
"""

from __future__ import annotations

import pytest
import torch

from clipad_export.models import TINY_MODEL, WeightSpec, load_model
from clipad_export.sdp import SDPModel

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CI and the build machines have none")


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
    x = torch.randint(0, 256, (2, cpu.image_size, cpu.image_size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
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
