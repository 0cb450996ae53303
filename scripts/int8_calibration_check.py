"""How the OpenVINO INT8 IR's calibration images change its quality gate: the export's default
(8 synthetic frames) against images of the part (what `clipad calibrate --int8 --int8-backend
openvino --images DIR` uses), both quantised with clipad's NNCF settings from the export's FP32
IR and judged by clipad's quality gate on one or more labelled held-out sets.

Beside the gate it prints the image AUROC of each half of the fused image score (image_prob
alone, the map maximum alone, method.md section 6), which shows which half a reduced precision
moved. Nothing in the artifact directory is changed (the IRs go to a temporary folder).

python scripts/int8_calibration_check.py ARTIFACTS PART_IMAGES GATE_ROOT [GATE_ROOT ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from clipad.data.images import read_model_images
from clipad.deploy.artifacts import load_artifacts
from clipad.deploy.gate_step import Baseline, gate_step
from clipad.deploy.manifest import OV_XML
from clipad.deploy.openvino_export import quantize_int8
from clipad.deploy.parity import parity_images
from clipad.deploy.quality_gate import gate_images
from clipad.deploy.runners.openvino import OpenVinoRunner
from clipad.evaluation.metrics import binary_metrics
from clipad.model.fusion import map_max


def _halves(labels: np.ndarray, out: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    """Image AUROC (points) of image_prob alone and of the map maximum alone."""
    return 100 * binary_metrics(labels, out[1])["auroc"], 100 * binary_metrics(labels, map_max(out[0]))["auroc"]


def main() -> None:
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    art = load_artifacts(sys.argv[1])
    xml = art.verified_path(OV_XML)
    size, mb = art.geometry, art.max_batch
    sets = {Path(r).name: gate_images(Path(r), art.manifest.category, size) for r in sys.argv[3:]}
    fp32 = {}
    fp32_runner = OpenVinoRunner(xml, "fp32", max_batch=mb)
    for name, gs in sets.items():
        t0 = time.perf_counter()
        fp32[name] = fp32_runner.run(gs.images)
        print(
            f"{name}: {len(gs.images)} images ({int(gs.labels.sum())} anomalous); fp32 in "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    calibrations = {
        "8 synthetic frames (export default)": parity_images(size, 9, seed=2)[:8],
        "part images": read_model_images(sys.argv[2], size, 64),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, images) in enumerate(calibrations.items()):
            dst = Path(tmp) / f"int8_{i}.xml"
            t0 = time.perf_counter()
            quantize_int8(xml, dst, images)
            print(
                f"\nINT8 calibrated on {label} ({len(images)}): quantised in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            for name, gs in sets.items():
                labels = gs.labels
                with OpenVinoRunner(dst, "int8", max_batch=mb) as runner:
                    baseline = Baseline(gs.images, fp32[name], "openvino fp32")
                    judged = gate_step(runner, baseline, None, gs, fp32_runner, "openvino fp32")
                red, g = judged.outputs, judged.gate
                assert g is not None  # gate_step judges every gate set it is given
                p32, m32 = _halves(labels, fp32[name])
                p8, m8 = _halves(labels, red)
                print(
                    f"  {name}: pixel AUROC {100 * g.pixel_auroc_fp32:.2f} -> {100 * g.pixel_auroc:.2f}, image "
                    f"{100 * g.image_auroc_fp32:.2f} -> {100 * g.image_auroc:.2f} (drops {g.pixel_drop_points:.2f} / "
                    f"{g.image_drop_points:.2f}): {'passed' if g.passed else 'FAILED'}; "
                    f"rel L2 {g.agreement.rel_l2:.2e}, top-1% {g.agreement.top1pct_agreement:.3f}; "
                    f"image_prob alone {p32:.2f} -> {p8:.2f}, map max alone "
                    f"{m32:.2f} -> {m8:.2f}; image_prob error std {np.std(red[1] - fp32[name][1]):.2e}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
