"""OpenVINO backend: the IR of `clipad export --openvino`, compiled with an explicit precision.

fp32, bf16 and fp16 compile ``model.xml`` with that inference precision hint (its FP32 islands
carry OpenVINO's "precise" marking, clipad.deploy.openvino_ir); int8 compiles NNCF's
``model.int8.xml`` with an f32 hint for its unquantised rest. OpenVINO's own default (BF16
everywhere on CPUs that have it) is never used. The IR's .xml and .bin are checked against the
manifest's sha256 before loading. torch-free.

Performance mode: ``latency`` (one camera) or ``throughput`` (many cameras), as the runner
(``clipad.deploy.runners.openvino``) runs them.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from clipad.core.choices import OpenVinoMode, check_served
from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import OpenVinoEntry, OvPrecision
from clipad.deploy.openvino_ir import ov_device, require_openvino
from clipad.deploy.runners.openvino import OpenVinoRunner
from clipad.runtime.backends.base import Backend, BackendInfo


def ir_file(artifacts: Artifacts, precision: str) -> str:
    """The IR .xml serving ``precision``; one line when the artifacts have none."""
    entry = artifacts.manifest.openvino
    if entry is None:
        raise ClipadError(f"{artifacts.root} has no OpenVINO IR; export with `clipad export --openvino`")
    check_served("openvino", precision)
    xml = entry.ir.get(cast(OvPrecision, precision)) or (entry.ir["fp32"] if precision in ("bf16", "fp16") else None)
    if xml is None:
        raise ClipadError(f"{artifacts.root} has no OpenVINO {precision} IR (it has {', '.join(entry.ir)})")
    return xml


def choose_precision(entry: OpenVinoEntry | None, capabilities: list[str]) -> OvPrecision:
    """``--precision auto`` for OpenVINO: the fastest reduced precision whose quality gate passed
    (manifest ``openvino.gates``) and that this device runs natively: int8 (its IR kept; 0.36x
    ONNX Runtime FP32 against bf16's 0.56x on the AVX-512 BF16 CPU of docs/benchmarks.md), then
    bf16 (capability BF16: AMX or AVX-512 BF16), else fp32."""
    if entry is None:
        return "fp32"
    gates = entry.gates or {}
    reduced: tuple[OvPrecision, ...] = ("int8", "bf16")
    for precision in reduced:
        gate = gates.get(precision)
        if gate is not None and gate.passed and precision.upper() in capabilities and precision in entry.ir:
            return precision
    return "fp32"


def auto_precision(artifacts: Artifacts, device: str) -> OvPrecision:
    """``choose_precision`` with this machine's device capabilities."""
    ov = require_openvino()
    from clipad.deploy.openvino_ir import device_capabilities

    return choose_precision(artifacts.manifest.openvino, device_capabilities(ov.Core(), ov_device(device)))


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(
        self,
        artifacts: Artifacts,
        precision: OvPrecision = "fp32",
        device: str = "auto",
        mode: OpenVinoMode = "latency",
    ):
        require_openvino()
        self.runner: OpenVinoRunner | None = None
        self.device = ov_device(device)
        xml = ir_file(artifacts, precision)
        path = artifacts.verified_path(xml)
        artifacts.verified_path(xml.removesuffix(".xml") + ".bin")
        self.runner = OpenVinoRunner(path, precision, artifacts.max_batch, self.device, mode)
        self.mode = mode
        self.precision = precision
        self.max_batch = artifacts.max_batch

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.runner is None:
            raise ClipadError("the openvino backend was closed")
        return self.runner.infer(images)

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, self.precision, "cpu", f"OpenVINO {self.device}, {self.mode}", self.max_batch)

    def close(self) -> None:
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.close()
