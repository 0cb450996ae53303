"""Installed distributions, read from their metadata without importing them."""

from __future__ import annotations

import importlib.metadata


def installed_version(*dists: str) -> str | None:
    """The installed version of the first of ``dists`` (distribution names) that is installed."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


# The optional packages a command may need, and the install that brings each (pyproject's extras).
INSTALL_HINTS = {
    "onnxruntime": "pip install 'clipad[cpu]', or on an NVIDIA GPU workstation "
    "pip install --extra-index-url https://pypi.nvidia.com 'clipad[gpu]'",
    "openvino": "pip install 'clipad[openvino]'",
    "nncf": "pip install 'clipad[openvino]'",
}


def describe_failure(err: Exception) -> str:
    """One line for an error that stops a command: ours as they are worded, a missing optional package
    with the install that brings it, anything else with its type and the way to its traceback; any
    URL in it without credentials."""
    from clipad.core.errors import ClipadError
    from clipad.core.redaction import redact

    if isinstance(err, ClipadError):
        return redact(f"error: {err}")
    if isinstance(err, ModuleNotFoundError) and err.name in INSTALL_HINTS:
        return (
            f"error: {err.name} is not installed: {INSTALL_HINTS[err.name]} "
            "(`clipad doctor` tells what this machine has)"
        )
    return redact(f"error: {type(err).__name__}: {err} (run `clipad --debug ...` for the traceback)")


def quiet_third_party() -> None:
    """Keep OpenCV's capture warnings and huggingface_hub's retry messages out of the user's way: clipad
    reports what went wrong in its own one line (``clipad --debug`` shows them all)."""
    import logging
    import os
    import sys

    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")  # read when cv2 is first imported
    if "cv2" in sys.modules:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    for name in ("huggingface_hub", "torch.utils.cpp_extension"):  # "No CUDA runtime is found" when NNCF imports it
        logging.getLogger(name).setLevel(logging.ERROR)
