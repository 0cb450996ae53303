"""What every serving command opens first: the artifacts, the backend and the calibration.

`clipad run`, `clipad predict` and `clipad calibrate` share one policy: find the artifact
directory, pick the backend (``select_backend``), read the calibration constants (refusing
constants made for another model), and say what the user should know about that choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

from clipad.calibration.constants import Calibration
from clipad.core.choices import BackendName, OpenVinoMode, ServedPrecision
from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import Artifacts, load_artifacts
from clipad.deploy.manifest import MANIFEST, CalibrationEntry
from clipad.runtime.backends import Backend, OpenVinoOptions, select_backend

if TYPE_CHECKING:
    from clipad.runtime.backends.triton_backend import TritonTarget

DEFAULT_ARTIFACTS = Path("artifacts")


def find_artifacts(path: Path | None) -> Path:
    """``path``, or the only artifact directory under ./artifacts (one line otherwise)."""
    if path is not None:
        return path
    found = sorted(p.parent for p in DEFAULT_ARTIFACTS.glob(f"*/{MANIFEST}"))
    if len(found) == 1:
        return found[0]
    several = (
        f" (several under {DEFAULT_ARTIFACTS}/: {', '.join(p.name for p in found)})"
        if found
        else " (run `clipad export` first)"
    )
    raise ClipadError("--artifacts DIR is needed" + several)


@dataclass
class Served:
    """An opened serving setup. ``notes``: what the user should be told about it, one line each."""

    artifacts: Artifacts
    backend: Backend
    calibration: Calibration | None
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        self.backend.close()


def open_served(
    artifacts: Path | None,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    need_calibration: bool = True,
    triton: TritonTarget | None = None,
    mode: str = "latency",
) -> Served:
    """Artifacts, the chosen backend and (with ``need_calibration``) the calibration constants;
    ``triton``: the server of ``backend`` triton (``backends.triton_backend.TritonTarget``);
    ``mode``: OpenVINO's performance hint (latency or throughput)."""
    art = load_artifacts(find_artifacts(artifacts))
    # The command line's words; select_backend parses each (one line for a word it does not know).
    be = select_backend(
        art,
        cast("BackendName | Literal['auto']", backend),
        device,
        cast("ServedPrecision | Literal['auto']", precision),
        triton=triton,
        openvino=OpenVinoOptions(cast(OpenVinoMode, mode)),
    )
    notes = [f"backend: {be.describe()} (max batch {be.max_batch})", *be.notes]
    cal = None
    if need_calibration:
        cal = Calibration.from_manifest(art.manifest)
        entry = art.manifest.calibration  # a CalibrationEntry whenever cal is not None (from_manifest)
        calibrated_with = entry.backend if cal is not None and isinstance(entry, CalibrationEntry) else None
        if cal is None:
            notes.append("uncalibrated: score and label are null until `clipad calibrate` has run")
        elif calibrated_with != be.describe():
            notes.append(
                f"note: calibrated with {calibrated_with}, serving with {be.describe()}: scores differ by the "
                "backends' parity; calibrate with the serving backend for exact thresholds"
            )
    return Served(art, be, cal, notes)


def triton_target(
    backend: str,
    url: str | None,
    model: str | None,
    version: str,
    timeout: float,
    inflight: int,
    shm: bool,
    given: Sequence[str] = (),
) -> TritonTarget | None:
    """The Triton server of ``--backend triton`` (None for the other backends), checked; one line for
    Triton options given without it (``given``: the options on the command line; ``--url`` and
    ``--triton-model`` also by value), or for it without ``--url``."""
    from clipad.runtime.backends.triton_backend import TritonTarget

    if backend != "triton":
        given = [f for f in given if f == "--url" or f.startswith("--triton-")]
        given += [f for f, v in (("--url", url), ("--triton-model", model)) if v is not None]
        if given:
            raise ClipadError(f"{', '.join(dict.fromkeys(given))} go with the triton backend, which is not chosen")
        return None
    if url is None:
        raise ClipadError("--backend triton needs --url grpc://HOST:PORT or http://HOST:PORT")
    target = TritonTarget(url, model, version, timeout, inflight, shm)
    target.check()
    return target
