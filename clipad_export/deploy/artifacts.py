"""The artifact directory: its manifest, its files, and the one reader every consumer uses.

Layout (contract): ``manifest.json``; ``text_features.npy`` float32 [2, embed_dim] (row 0
normal, row 1 abnormal, unit rows); ``model.onnx``; optionally ``model.fp16.onnx``, ``model.int8.onnx``,
``model.plan`` + ``model.plan.json``. The manifest records how the artifacts were made, the
graph's inputs and outputs, parity figures, calibration constants (null until calibrated) and
the sha256 of every file; readers verify a file's hash before they use it.

An export is built in a sibling ``<out>.partial-<pid>`` directory and renamed into place only
when complete, so an interrupted export never leaves a half-written artifact directory.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from clipad.core.atomic import write_text_atomic
from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TEXT_FEATURES = "text_features.npy"
ONNX_FP32 = "model.onnx"
ONNX_FP16 = "model.fp16.onnx"
ONNX_INT8 = "model.int8.onnx"  # written by `clipad calibrate --int8`
PLAN = "model.plan"
PLAN_META = "model.plan.json"


@dataclass
class Artifacts:
    """An artifact directory with its parsed manifest."""

    root: Path
    manifest: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.root / name

    def has(self, name: str) -> bool:
        return name in self.manifest.get("files", {}) and (self.root / name).is_file()

    def verified_path(self, name: str) -> Path:
        """The file's path after checking it against the manifest's sha256 (one line on mismatch)."""
        expected = self.manifest.get("files", {}).get(name)
        path = self.root / name
        if expected is None or not path.is_file():
            raise ClipadError(f"{self.root} has no {name} (export it first)")
        if file_sha256(path) != expected:
            raise ClipadError(f"{path} does not match the sha256 in its manifest: the file changed after export; re-export")
        return path

    def text_features(self) -> np.ndarray:
        """float32 [2, embed_dim], hash-checked."""
        return np.load(self.verified_path(TEXT_FEATURES), allow_pickle=False)

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def max_batch(self) -> int:
        return int(self.manifest["max_batch"])

    def save_manifest(self) -> None:
        write_text_atomic(self.root / MANIFEST, json.dumps(self.manifest, indent=2) + "\n")


def load_artifacts(root: str | Path) -> Artifacts:
    """Read and sanity-check an artifact directory's manifest."""
    root = Path(root)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ClipadError(f"{root} is not a clipad artifact directory (no {MANIFEST}); run `clipad export` first")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as err:
        raise ClipadError(f"cannot read {mpath}: {err}") from None
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ClipadError(f"{mpath} has format version {version}; this clipad reads version {FORMAT_VERSION}: re-export")
    return Artifacts(root, manifest)


def hash_files(root: Path, names: list[str]) -> dict[str, str]:
    return {n: file_sha256(root / n) for n in names if (root / n).is_file()}


def _remove_stale_partials(out: Path) -> None:
    for p in out.parent.glob(f"{out.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)  # still running: leave it alone
        except (ValueError, ProcessLookupError):
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


@contextmanager
def staging_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces ``out`` in one rename.

    ``out`` may already hold an earlier export (it has a manifest); anything else there is
    refused rather than overwritten.
    """
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file() and (out.is_file() or any(out.iterdir())):
        raise ClipadError(f"{out} exists and is not a clipad artifact directory; choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(out)
        stage = out.parent / f"{out.name}.partial-{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
    except OSError as err:
        raise ClipadError(f"cannot write to {out.parent}: {err.strerror or err}") from None
    try:
        yield stage
        if out.exists():
            old = out.parent / f"{out.name}.old-{os.getpid()}"
            out.rename(old)
            stage.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            stage.rename(out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
