"""The artifact directory: the one reader every consumer uses, and the staging of an export.

Layout (contract; file names and the manifest's schema are in ``clipad.deploy.manifest``):
``manifest.json``; ``text_features.npy`` float32 [2, embed_dim] (row 0 normal, row 1 abnormal,
unit rows); ``model.onnx``; optionally ``model.fp16.onnx``, ``model.int8.onnx``,
``model.plan`` + ``model.plan.json``, and ``heads.safetensors`` (sdp+). The manifest records how
the artifacts were made, the graph's inputs and outputs, parity figures, calibration constants
(null until calibrated) and the sha256 of every file; readers verify a file's hash before they
use it.

An export is built in a sibling ``<out>.partial-<pid>`` directory and renamed into place only
when complete, so an interrupted export never leaves a half-written artifact directory; the
directory carries the marker ``.clipad-artifacts`` (``clipad.core.owned``: what an export may
replace).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipad.core.errors import ClipadError, IntegrityError
from clipad.core.hashing import file_sha256
from clipad.core.owned import FolderKind, has_marker, open_stage
from clipad.data.geometry import Geometry
from clipad.deploy.manifest import (
    ARTIFACT_FILES,
    MANIFEST,
    ONNX_FILES,
    PLAN_META,
    TEXT_FEATURES,
    EngineMeta,
    Manifest,
    ParityFigures,
)


@dataclass
class Artifacts:
    """An artifact directory and its typed manifest.

    ``manifest`` is immutable; ``update`` writes a changed one (atomically) and keeps it.
    """

    root: Path
    manifest: Manifest

    def path(self, name: str) -> Path:
        return self.root / name

    def has(self, name: str) -> bool:
        return name in self.manifest.files and (self.root / name).is_file()

    def verified_path(self, name: str) -> Path:
        """The file's path after checking it against the manifest's sha256 (and a graph against the
        manifest's ``onnx`` record and image size): ClipadError when the manifest does not list it,
        IntegrityError when it is listed but missing, changed or not the graph it describes."""
        expected = self.manifest.files.get(name)
        path = self.root / name
        if expected is None:
            raise ClipadError(f"{self.root} has no {name} (export it first)")
        if not path.is_file():
            raise IntegrityError(
                f"{self.root} has no {name}, which its manifest lists: the export is incomplete; re-export"
            )
        if file_sha256(path) != expected:
            raise IntegrityError(
                f"{path} does not match the sha256 in its manifest: the file changed after export; re-export"
            )
        if name in ONNX_FILES.values():
            from clipad.deploy.graph_io import check_graph

            check_graph(self.manifest, path)
        return path

    def warnings(self) -> list[str]:
        """The manifest's warnings, as the commands print them."""
        return [f"WARNING: {w}" for w in self.manifest.warnings]

    def describe_parity(self) -> list[str]:
        """One line per exported precision (and OpenVINO IR) with its parity figures, then one per quality gate."""
        from clipad.deploy.quality_gate import describe_gate

        m, ov = self.manifest, self.manifest.openvino
        figures: list[tuple[str, ParityFigures | None]] = [(p, m.parity.figures(p)) for p in m.precisions]
        figures += [(f"openvino {p}", f) for p, f in ov.parity.items()] if ov else []
        lines = [
            f"parity {p} (vs {f.against}): rel L2 {f.rel_l2:.1e}, image_prob err {f.prob_max_abs:.1e}, "
            f"top-1% agreement {f.top1pct_agreement:.3f}"
            for p, f in figures
            if f is not None  # the manifest's validation: figures for every precision it lists
        ]
        lines += [describe_gate(f"onnxruntime {p}", g) for p, g in (m.parity.gates or {}).items()]
        return lines + [describe_gate(f"openvino {p}", g) for p, g in ((ov.gates or {}) if ov else {}).items()]

    def describe_reference(self) -> str:
        """What `clipad reference add` made: the memory's size and coverage, the parity re-run."""
        r, m = self.manifest.reference, self.manifest
        assert r is not None  # add_reference refuses artifacts without a reference memory
        parity = ", ".join(f"{p} rel L2 {f.rel_l2:.1e}" for p in m.precisions if (f := m.parity.figures(p)))
        return (
            f"reference memory of {self.root}: {len(r.images)} images, {r.patches_per_stage} patches per stage "
            f"(coverage radius <= {max(r.coreset_radius):.3g}); parity {parity}; a Triton repository made from the "
            "old graph must be written again (`clipad export --triton-repo`)"
        )

    def text_features(self) -> np.ndarray:
        """float32 [2, embed_dim], hash-checked."""
        return np.load(self.verified_path(TEXT_FEATURES), allow_pickle=False)

    def plan_meta(self) -> EngineMeta:
        """The TensorRT plan's sidecar (``model.plan.json``), hash-checked and validated."""
        return EngineMeta.read(self.verified_path(PLAN_META))

    @property
    def geometry(self) -> Geometry:
        """The model input's size and how images are fitted to it (``Manifest.geometry``)."""
        return self.manifest.geometry

    @property
    def max_batch(self) -> int:
        return self.manifest.max_batch

    @contextmanager
    def writing(self) -> Iterator[Artifacts]:
        """Hold the directory's writer lock (``artifact_lock``) and work on its manifest as it is on
        disk now, so that an update made by another command before the lock is never lost."""
        with artifact_lock(self.root):
            self.manifest = Manifest.read(self.root / MANIFEST)
            yield self

    def update(self, manifest: Manifest) -> None:
        """Write ``manifest`` as this directory's manifest.json (atomically) and use it from now on."""
        manifest.write(self.root / MANIFEST)
        self.manifest = manifest


def load_artifacts(root: str | Path) -> Artifacts:
    """Read and validate an artifact directory's manifest (one line naming the field when invalid)."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        raise ClipadError(f"{root} is not a clipad artifact directory (no {MANIFEST}); run `clipad export` first")
    return Artifacts(root, Manifest.read(root / MANIFEST))


def made_by_calibrate(root: str | Path) -> list[str]:
    """What the artifact directory at ``root`` holds that only `clipad calibrate` makes, and a
    re-export there would replace: "calibration constants", "an INT8 graph" (empty when nothing,
    or when there is no readable manifest: then there is nothing to lose either)."""
    try:
        manifest = Manifest.read(Path(root) / MANIFEST)
    except ClipadError:
        return []
    return (["calibration constants"] if manifest.calibrated else []) + (
        ["an INT8 graph"] if "int8" in manifest.precisions else []
    )


def hash_files(root: Path, names: tuple[str, ...] | list[str] = ARTIFACT_FILES) -> dict[str, str]:
    """name -> sha256 of each of ``names`` that exists in ``root``."""
    return {n: file_sha256(root / n) for n in names if (root / n).is_file()}


def lock_path(root: Path) -> Path:
    """The lock file of an artifact directory: a sibling, so that replacing the directory keeps it."""
    return root.parent / f".{root.name}.lock"


@contextmanager
def artifact_lock(root: str | Path) -> Iterator[None]:
    """Hold the artifact directory's writer lock: one `clipad export` / `calibrate` at a time per
    directory, so no update is lost; a second writer is refused in one line."""
    root = Path(root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path(root), "a")
    except OSError as err:
        raise ClipadError(f"cannot write to {root.parent}: {err.strerror or err}") from None
    try:
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass  # no advisory locks on this platform
        except BlockingIOError:
            raise ClipadError(
                f"another clipad command (export or calibrate) is writing {root}; run this one when it has finished"
            ) from None
        except OSError:
            pass  # file systems without locks
        yield
    finally:
        handle.close()  # releases the lock


ARTIFACTS = FolderKind("artifacts", lambda rel: rel == MANIFEST or rel in ARTIFACT_FILES)


@contextmanager
def staging_dir(out: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory (marked as artifacts); on success it replaces ``out``.

    ``out`` may be new, empty, or an earlier export: the artifacts' marker and a valid manifest,
    and no file clipad did not write (``clipad.core.owned``); anything else is refused in one
    line. Where the file system can swap two directories in one step, ``out`` holds the old or
    the new export at every instant; elsewhere two renames leave a moment in which ``out`` is
    absent (the old export then sits beside it as ``<out>.old-<pid>``).
    """
    stage = open_stage(out, ARTIFACTS)
    try:
        if has_marker(stage.out, ARTIFACTS) and (stage.out / MANIFEST).exists():
            try:
                Manifest.read(stage.out / MANIFEST)
            except ClipadError as err:
                raise ClipadError(
                    f"--out {stage.out} holds an invalid export ({err}); remove it or choose another --out"
                ) from None
        yield stage.path
        stage.commit()
    finally:
        stage.discard()
