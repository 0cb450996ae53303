"""What a row's speed is set against: the analytic FLOPs of one forward, a matrix-multiply
ceiling measured in the same run, and the dual path's cost over a plain image encoding."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from clipad.methods.base import Method
from clipad.model.preprocess import normalize
from clipad.runtime.bench.timing import cuda_sync, percentiles, time_calls


def flop_figures(reference: Any, image_size: int, method: Method) -> dict[str, Any]:
    """FLOPs of one image through ``reference`` (the export's PyTorch reference) by part as
    ``method`` counts them (``Method.graph_flops``), and of a plain open_clip encoding of the same
    ViT (None for a method without the dual path); the JSON's ``flops``."""
    fig = method.graph_flops(reference, image_size)
    return {
        "per_image": fig.per_image,
        "plain_encoding_per_image": fig.plain_encoding,
        "dims": fig.dims.__dict__,
        "convention": "multiply-add = 2 FLOPs; matrix products and the patch conv only",
    }


def matmul_ceiling(device: str, dtype: torch.dtype) -> dict[str, Any]:
    """Median GFLOP/s of an n x n x n matrix product (n 8192 on CUDA, 2048 on the CPU), with
    its samples (ms)."""
    n = 8192 if device == "cuda" else 2048
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    with torch.no_grad():
        ms = time_calls(lambda: a @ b, 2, 5 if device == "cpu" else 10, cuda_sync if device == "cuda" else None)
    return {"gflops_per_s": 2 * n**3 / (float(np.median(ms)) / 1000.0) / 1e9, "n": n, "samples_ms": ms}


def ceilings(device: torch.device) -> dict[str, dict]:
    """The CPU FP32 ceiling always; FP32 and FP16 on CUDA when the bench uses it."""
    out = {"cpu_fp32": matmul_ceiling("cpu", torch.float32)}
    if device.type == "cuda":
        out["cuda_fp32"] = matmul_ceiling("cuda", torch.float32)
        out["cuda_fp32"]["tf32_allowed"] = bool(torch.backends.cuda.matmul.allow_tf32)
        out["cuda_fp16"] = matmul_ceiling("cuda", torch.float16)
    return out


def ceiling_key(device: str, precision: str) -> str:
    """Which ceiling a row is compared with: FP16/INT8 on CUDA against FP16, everything else FP32."""
    if device == "cuda":
        return "cuda_fp16" if precision in ("fp16", "int8") else "cuda_fp32"
    return "cpu_fp32"


def dual_path_cost(
    reference: Any, images: np.ndarray, device: torch.device, warmup: int, iterations: int
) -> list[dict]:
    """The dual path (DualPathViT) against a plain open_clip encoding on the same input.

    reference: SDPModel on ``device``; images: uint8 [B, H, W, 3]. FP32, and FP16 autocast on
    CUDA. One dict per precision with both timings (ms) and ``ratio`` = dual p50 / plain p50.
    """
    vit = reference.vit
    x = normalize(torch.from_numpy(images).to(device), reference.mean, reference.std)
    sync = cuda_sync if device.type == "cuda" else None
    rows = []
    for precision in ("fp32", "fp16") if device.type == "cuda" else ("fp32",):
        autocast = torch.autocast("cuda", dtype=torch.float16, enabled=precision == "fp16")

        def dual(autocast: torch.autocast = autocast) -> Any:
            with autocast:
                return vit(x)

        def plain(autocast: torch.autocast = autocast) -> Any:
            with autocast:
                return vit.visual(x)

        with torch.no_grad():
            d = percentiles(time_calls(dual, warmup, iterations, sync))
            p = percentiles(time_calls(plain, warmup, iterations, sync))
        rows.append(
            {
                "precision": precision,
                "device": device.type,
                "batch": len(images),
                "dual_path_ms": d,
                "plain_encoding_ms": p,
                "ratio": d["p50"] / p["p50"],
            }
        )
    return rows
