"""What `clipad bench --json` holds: its version and a definition of every figure."""

from __future__ import annotations

SCHEMA_VERSION = 1

DEFINITIONS = {
    "latency_ms": "wall time of one backend call on a batch (uint8 frames in, map and probability on the host out), "
    "over the timed iterations only; warm-up calls excluded",
    "images_per_s": "batch / p50 latency",
    "gflops_per_s": "analytic FLOPs of one image (flops.per_image.total) x images_per_s / 1e9",
    "fraction_of_ceiling": "gflops_per_s over the matmul ceiling named in 'ceiling', measured in the same run",
    "start_up_s": "time to open the backend: hash check of the model file plus session creation, engine "
    "deserialisation or (torch) rebuilding the reference from the manifest",
    "peak_host_mb": "resident-set high-water mark of the whole bench process during the row (Linux VmHWM, reset "
    "before the row through /proc/self/clear_refs; the first batch of a backend includes opening "
    "it); it counts everything resident, Python and libraries included. Where VmHWM cannot be "
    "reset, ru_maxrss: the process's peak since it started (see host_memory_method)",
    "gpu_mb": "torch.cuda.max_memory_allocated during the row (weights included) for torch on CUDA; null "
    "elsewhere (other backends allocate outside torch's allocator)",
    "parity": "the figures of `clipad parity` against the FP32 PyTorch reference on the CPU, on 3 deterministic "
    "images; within_tolerance uses TOLERANCES[precision], null where no limit is defined",
    "attention": "the torch rows' attention form: fused (scaled_dot_product_attention) or explicit (MatMul, "
    "scale, Softmax: the exported graph's form); null for the other backends",
    "goals": "ratios of two rows of this run with a limit; value null where a side could not be measured "
    "(the reduced-precision goal counts only rows whose AUROC quality gate in the manifest passed)",
    "ratios": "ratios of two rows of this run reported without a limit (OpenVINO over ONNX Runtime FP32, per batch)",
    "dual_path": "DualPathViT forward (both paths, taps projected) over the plain open_clip image encoding "
    "visual(x) on the same normalised input, same warm-up and iterations; empty for a method without a dual path "
    "(anomalydino, whose flops.plain_encoding_per_image is null too)",
}
