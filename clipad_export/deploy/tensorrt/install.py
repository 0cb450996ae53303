"""Which TensorRT is installed and for which CUDA major, read from the distributions' metadata
without importing TensorRT; and which TensorRT major a shared library links.

NVIDIA's wheels (python/packaging/tensorrt_build_backend/__init__.py, NVIDIA/TensorRT main
@a892d222, lines 112-119) are named ``tensorrt_cu<N>`` (front end), ``tensorrt_cu<N>_libs`` and
``tensorrt_cu<N>_bindings`` (the ``tensorrt`` module), N the CUDA major; the plain ``tensorrt``
meta package pins one of them. TensorRT before 10.13.2 (the first release with CUDA 13, its
CHANGELOG) also shipped ``tensorrt_libs``/``tensorrt_bindings``, CUDA 12 builds.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

# The distributions that carry the ``tensorrt`` module, then its libraries, then the front ends:
# the first one installed gives the version.
_DISTS = tuple(
    f"tensorrt{suffix}{part}" for part in ("-bindings", "-libs", "") for suffix in ("-cu13", "-cu12", "")
) + ("tensorrt-lean", "tensorrt-dispatch")
_CUDA_OF_NAME = re.compile(r"-cu(\d+)")
LEGACY_CUDA_MAJOR = 12  # tensorrt_libs / tensorrt_bindings without a -cuNN suffix


@dataclass(frozen=True)
class InstalledTensorRT:
    """The installed TensorRT wheels: ``version`` of the first of them, ``cuda_major`` they were
    built for (None when the names do not say), ``distributions`` every one found."""

    version: str
    cuda_major: int | None
    distributions: tuple[str, ...]

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def installed_tensorrt() -> InstalledTensorRT | None:
    """The installed TensorRT wheels, or None when there are none."""
    found: list[tuple[str, str]] = []
    for dist in _DISTS:
        try:
            found.append((dist, importlib.metadata.version(dist)))
        except importlib.metadata.PackageNotFoundError:
            continue
    if not found:
        return None
    majors = {int(m.group(1)) for d, _ in found if (m := _CUDA_OF_NAME.search(d))}
    legacy = any(d in ("tensorrt-libs", "tensorrt-bindings") for d, _ in found)
    cuda = majors.pop() if len(majors) == 1 else (LEGACY_CUDA_MAJOR if legacy and not majors else None)
    return InstalledTensorRT(found[0][1], cuda, tuple(d for d, _ in found))


def onnxruntime_tensorrt_ep_library() -> Path | None:
    """ONNX Runtime's TensorRT provider library (onnxruntime-gpu's ``capi/``), found without
    importing onnxruntime; None when this onnxruntime has none."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "capi" / "libonnxruntime_providers_tensorrt.so"
    return lib if lib.is_file() else None


def linked_libraries(path: str | Path) -> list[str]:
    """The DT_NEEDED entries of an ELF shared library (what the dynamic loader must find), read
    with pyelftools; [] for a file that is not ELF or has no dynamic section."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            return [
                tag.needed  # type: ignore[attr-defined]  # pyelftools sets DT_NEEDED's name with setattr
                for section in elf.iter_sections()
                if isinstance(section, DynamicSection)
                for tag in section.iter_tags()
                if tag.entry.d_tag == "DT_NEEDED"
            ]
    except (ELFError, OSError):
        return []


def linked_tensorrt_major(path: str | Path) -> int | None:
    """The TensorRT major a library links (``libnvinfer.so.10`` -> 10), None when it links none."""
    for lib in linked_libraries(path):
        m = re.fullmatch(r"libnvinfer\.so\.(\d+)", lib)
        if m:
            return int(m.group(1))
    return None


def tensorrt_ep_problem(linked_major: int | None, installed: InstalledTensorRT | None) -> str | None:
    """Why ONNX Runtime's TensorRT EP cannot load here, in a few words; None when it can or when
    that cannot be told (the library's TensorRT major unknown: the session then says).

    ``linked_major``: the TensorRT major the EP library links (``linked_tensorrt_major``);
    ``installed``: the TensorRT wheels installed (``installed_tensorrt``)."""
    if installed is None:
        return (
            "onnxruntime's TensorRT provider needs TensorRT"
            + (f" {linked_major}" if linked_major else "")
            + ", and none is installed"
        )
    if linked_major is not None and installed.major != linked_major:
        return (
            f"onnxruntime's TensorRT provider links TensorRT {linked_major}, TensorRT {installed.version} is installed"
        )
    return None


# The first NVIDIA driver branch for each CUDA major (CUDA's release notes, "CUDA Toolkit and
# Corresponding Driver Versions"): what cuda-python of that major and a TensorRT built for it need.
DRIVER_FOR_CUDA = {12: "R525", 13: "R580"}


def _major(version: str | None) -> int | None:
    m = re.match(r"\d+", version or "")
    return int(m.group()) if m else None


def cuda_mismatch(trt: InstalledTensorRT | None, cuda_python: str | None, driver_cuda: str | None = None) -> str | None:
    """Why TensorRT, cuda-python and the driver do not fit together, in one line (None: they do,
    or there is too little to tell).

    ``trt``: the installed TensorRT wheels; ``cuda_python``: the cuda-python (or cuda-bindings)
    version; ``driver_cuda``: the newest CUDA the driver supports ("12.8", from
    ``cudaDriverGetVersion``), None when unknown. cuda-python's major is the CUDA major it binds,
    so it must equal TensorRT's, and the driver must support at least that major."""
    cp = _major(cuda_python)
    if trt is not None and trt.cuda_major is not None and cp is not None and cp != trt.cuda_major:
        n = trt.cuda_major
        return (
            f"TensorRT {trt.version} is a CUDA {n} build but cuda-python {cuda_python} binds CUDA {cp}: "
            f"pip install 'cuda-python>={n},<{n + 1}'"
        )
    need = trt.cuda_major if trt is not None and trt.cuda_major is not None else cp
    have = _major(driver_cuda)
    if need is not None and have is not None and have < need:
        return (
            f"{'TensorRT ' + trt.version if trt is not None else 'cuda-python ' + str(cuda_python)} needs a driver "
            f"for CUDA {need} ({DRIVER_FOR_CUDA.get(need, 'a newer driver')} or newer); this driver supports CUDA "
            f"{driver_cuda}: update the driver, or install the CUDA {have} builds of TensorRT and cuda-python"
        )
    return None
