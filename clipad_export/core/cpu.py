"""The CPU this runs on, read from /proc/cpuinfo without torch (bench's machine record and
`clipad doctor` both read it here)."""

from __future__ import annotations

import platform
from pathlib import Path

# The flags that decide which reduced precision a CPU runs fast: VNNI for INT8, AVX-512 BF16 and
# AMX for BF16, AVX-512 FP16.
MATRIX_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 9554 64-Core Processor"); the platform's word where there
    is no /proc/cpuinfo."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_matrix_features() -> list[str]:
    """The CPU's matrix-relevant flags from /proc/cpuinfo, in ``MATRIX_FLAGS`` order."""
    flags = set((_cpuinfo_field("flags") or "").split())
    return [f for f in MATRIX_FLAGS if f in flags]
