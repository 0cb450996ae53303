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


# Third-party messages can hold paragraphs of advice (scikit-learn) or a line per tensor index (ONNX
# Runtime); the first line names the failure, the rest is cut at this many characters.
MAX_MESSAGE_CHARS = 240
DEBUG_HINT = "run `clipad --debug ...` for the traceback"
# Libraries that log warnings of their own through Python's logging; with --debug they speak.
THIRD_PARTY_LOGGERS = (
    "huggingface_hub", "torch", "onnxruntime", "onnx", "onnxscript", "openvino", "nncf", "tensorrt", "tritonclient",
    "pytriton", "open_clip", "timm", "PIL", "matplotlib", "urllib3", "httpx", "sklearn",
)  # fmt: skip


def first_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """The first line of ``text`` that says something (not blank, not only punctuation), with the next
    one when it ends in ':' (it announces them); at most ``limit`` characters."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip(" \t-=*:.|")]
    line = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return line if len(line) <= limit else line[: limit - 3].rstrip() + "..."


def _origin(err: BaseException) -> str:
    """The top-level package whose code raised ``err`` (the innermost frame of its traceback)."""
    tb, name = err.__traceback__, ""
    while tb is not None:
        name, tb = tb.tb_frame.f_globals.get("__name__", name), tb.tb_next
    return name.split(".")[0] if name and not name.startswith("clipad") else name


def describe_failure(err: BaseException) -> str:
    """One line, as a sentence, for any error that stops a command: ours as they are worded, a missing
    optional package with the install that brings it, a file the system refused with its path, memory,
    anything else with the first line of its message, where it came from and the way to its traceback;
    any URL in it without credentials."""
    from clipad.core.errors import ClipadError
    from clipad.core.redaction import redact

    if type(err).__name__ == "NoArgsIsHelpError":  # the parser printed the help instead of an error
        return ""
    message = getattr(err, "format_message", None)
    if callable(message) and hasattr(err, "exit_code"):  # a command-line usage error (Click's, through Typer)
        ctx = getattr(err, "ctx", None)
        hint = f" (`{ctx.command_path} --help` lists the options)" if ctx is not None else ""
        return redact(f"error: {first_line(message(), 2 * MAX_MESSAGE_CHARS)}{hint}")
    if isinstance(err, ClipadError):  # ours: one line already; joined should one hold a newline
        return redact("error: " + " ".join(ln.strip() for ln in str(err).splitlines() if ln.strip()))
    if isinstance(err, ModuleNotFoundError) and err.name in INSTALL_HINTS:
        return (
            f"error: {err.name} is not installed: {INSTALL_HINTS[err.name]} "
            "(`clipad doctor` tells what this machine has)"
        )
    if isinstance(err, MemoryError):
        return (
            "error: out of memory: the options given need more memory than this machine has (smaller values need less)"
        )
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        path = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
        return redact(
            first_line(f"error: cannot use {path}: {err.strerror.lower()} ({DEBUG_HINT})", 2 * MAX_MESSAGE_CHARS)
        )
    origin = _origin(err)
    message = first_line(str(err)) or "no message"
    where = f" in {origin}" if origin else ""
    return redact(f"error: the command stopped on an unexpected {type(err).__name__}{where}: {message} ({DEBUG_HINT})")


def quiet_third_party() -> None:
    """Keep third-party warnings (Python's warnings, the libraries' loggers, OpenCV's capture messages) out of
    the user's way: clipad reports what went wrong in its own one line (``clipad --debug`` shows them all)."""
    import logging
    import os
    import sys
    import warnings

    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")  # read when cv2 is first imported
    if "cv2" in sys.modules:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    warnings.simplefilter("ignore")  # clipad's own warnings are lines it prints, never Python warnings
    for name in THIRD_PARTY_LOGGERS:  # torch.utils.cpp_extension: "No CUDA runtime is found" when NNCF imports it
        logging.getLogger(name).setLevel(logging.ERROR)
