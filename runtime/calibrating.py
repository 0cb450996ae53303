"""`clipad calibrate` over an artifact directory: the INT8 model (``calibration.int8``) and the score
constants (``calibration.calibrate``) on the backend the user chose (``serving.open_served``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

from clipad.calibration.calibrate import CalibrateConfig, calibrate, describe_calibration, describe_int8
from clipad.core.progress import Tasks
from clipad.core.writable import check_writable
from clipad.runtime.serving import Served


def calibrate_artifacts(
    cfg: CalibrateConfig, art_dir: Path, open_served: Callable[[], Served], tasks: Tasks, log: Callable[[str], None]
) -> Iterator[str]:
    """Do what ``cfg`` asks (checked by ``cfg.check()``) in ``art_dir``; yields a line for each thing made,
    warnings go to ``log``. ``open_served``: the backend that scores the calibration images."""
    from clipad.calibration.int8 import check_int8_backend, make_int8
    from clipad.data.images import read_model_images
    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.manifest import MANIFEST, ONNX_INT8, OV_INT8_XML

    check_writable(art_dir / MANIFEST, "--artifacts")  # the calibration and INT8 model go there, after the work
    if cfg.int8:
        art = load_artifacts(art_dir)
        check_int8_backend(art, cfg.int8_backend)
        # cfg.check(): --int8 comes with --images or --good, so int8_source names them
        imgs = read_model_images(cast(str, cfg.int8_source), art.geometry, cfg.int8_max_images)
        f, gate = make_int8(art, imgs, tasks, cfg.min_agreement, cfg.gate_data, cfg.max_auroc_drop, cfg.int8_backend)
        written = ONNX_INT8 if cfg.int8_backend == "onnxruntime" else OV_INT8_XML
        yield from describe_int8(written, len(imgs), f, gate, cfg.int8_backend)
    if cfg.good is not None:
        served = open_served()
        with served.backend:
            entry, warnings = calibrate(
                served.artifacts, served.backend, cfg.good, tasks, cfg.anomalous, cfg.masks, cfg.target_fpr
            )
        for w in warnings:
            log(f"warning: {w}")
        yield describe_calibration(entry, art_dir / MANIFEST)
