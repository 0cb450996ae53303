"""`clipad parity` and bench's parity figures: each backend against the FP32 PyTorch reference,
rebuilt from the manifest and run on the CPU, on the same uint8 frames.

The reference runs on the CPU whatever device the backends use, so a figure includes every
difference between the backend and the exported model's definition, the device's own included.
The figures and their limits are the export's (``clipad.deploy.parity``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from clipad.core.choices import BackendName, ServedPrecision, parse_choice
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import ParityFigures
from clipad.deploy.parity import TOLERANCES, compare
from clipad.runtime.backends import Backend, open_backend

if TYPE_CHECKING:
    from clipad.runtime.backends.triton_backend import TritonTarget

AGAINST = "torch fp32 (cpu)"


@dataclass(frozen=True)
class Reference:
    """Frames and the FP32 reference's outputs on them. images: uint8 [N, H, W, 3];
    anomaly_map: float32 [N, H, W]; image_prob: float32 [N]."""

    images: np.ndarray
    anomaly_map: np.ndarray
    image_prob: np.ndarray


def reference_outputs(artifacts: Artifacts, images: np.ndarray, model: Any = None) -> Reference:
    """The FP32 PyTorch reference of ``artifacts`` on the CPU, on uint8 [N, H, W, 3] ``images``
    in one forward. ``model``: the reference already rebuilt on the CPU (bench has one), else it
    is rebuilt here."""
    import torch  # the reference needs torch; the rest of this module does not

    if model is None:
        from clipad.deploy.rebuild import reference_model

        model = reference_model(artifacts, "cpu")
    with torch.no_grad():
        amap, prob = model(torch.from_numpy(np.ascontiguousarray(images)))
    return Reference(images, amap.numpy(), prob.numpy())


@dataclass(frozen=True)
class ParityRow:
    """One backend/precision against the reference: its description (name, precision, where it
    runs) and the figures (``n_images`` compared; ``violations`` of the precision's tolerance)."""

    backend: str
    precision: str
    figures: ParityFigures

    @property
    def within_tolerance(self) -> bool | None:
        """Inside ``TOLERANCES[precision]``; None where no limit is defined for the precision."""
        return self.figures.within

    def to_json(self) -> dict[str, Any]:
        """`clipad parity --json`'s keys: backend, precision, n_images, the figures, within_tolerance."""
        f = self.figures
        return {
            "backend": self.backend,
            "precision": self.precision,
            "n_images": f.n_images,
            **f.values(),
            "within_tolerance": f.within,
        }


def check_backend(backend: Backend, ref: Reference) -> ParityRow:
    """Run ``backend`` on the reference's frames and compare its outputs with the reference's,
    judged by the tolerance of its precision where one is defined."""
    info = backend.info()
    limits = info.precision if info.precision in TOLERANCES else None
    outputs = (ref.anomaly_map, ref.image_prob)
    figures = compare(outputs, backend(ref.images), AGAINST, limits, n_images=len(ref.images))
    return ParityRow(info.describe(), info.precision, figures)


def served_precisions(artifacts: Artifacts, name: BackendName) -> list[ServedPrecision | None]:
    """The precisions ``clipad parity`` checks for a backend: every ONNX graph of the artifacts,
    the plan's own precision for TensorRT and Triton (None: whatever it serves), every precision with
    export parity figures for OpenVINO, FP32 for torch."""
    ov = artifacts.manifest.openvino
    by_backend: dict[str, list[ServedPrecision | None]] = {
        "onnxruntime": list(artifacts.manifest.precisions),
        "tensorrt": [None],
        "triton": [None],
        "openvino": [p for p in (ov.parity if ov else {}) if p in ov.ir] if ov else ["fp32"],
    }
    return by_backend.get(name, ["fp32"])


def run_parity(
    artifacts: Artifacts,
    backends: Sequence[str],
    images: np.ndarray,
    device: str = "cpu",
    triton: TritonTarget | None = None,
) -> list[ParityRow]:
    """Each named backend at each precision it serves, opened on ``device`` one at a time,
    against the CPU reference on uint8 [N, H, W, 3] ``images``; one row each. ``triton``: the
    server of backend triton (whose model has the precision of the file it serves)."""
    names = [cast(BackendName, parse_choice(BackendName, n, "--backends")) for n in backends]
    ref = reference_outputs(artifacts, images)
    rows = []
    for name in names:
        for precision in served_precisions(artifacts, name):
            with open_backend(artifacts, name, precision, device, triton) as backend:
                rows.append(check_backend(backend, ref))
    return rows


def format_rows(rows: Sequence[ParityRow]) -> str:
    """A fixed-width table, one line per row; 'ok' is yes / NO, '-' where no limit is defined."""
    head = f"{'backend':<36} {'max abs':>10} {'rel L2':>10} {'prob err':>10} {'top-1% agree':>13}  ok"
    lines = [head, "-" * len(head)]
    for r in rows:
        f = r.figures
        ok = {True: "yes", False: "NO", None: "-"}[f.within]
        lines.append(
            f"{r.backend:<36} {f.max_abs:>10.2e} {f.rel_l2:>10.2e} {f.prob_max_abs:>10.2e} "
            f"{f.top1pct_agreement:>13.3f}  {ok}"
        )
    return "\n".join(lines)
