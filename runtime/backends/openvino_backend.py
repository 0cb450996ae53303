"""OpenVINO backend: the IR of `clipad export --openvino`, compiled with an explicit precision.

fp32, bf16 and fp16 compile ``model.xml`` with that inference precision hint (its FP32 islands
carry OpenVINO's "precise" marking, clipad.deploy.openvino_ir); int8 compiles NNCF's
``model.int8.xml`` with an f32 hint for its unquantised rest. OpenVINO's own default (BF16
everywhere on CPUs that have it) is never used. The IR's .xml and .bin are checked against the
manifest's sha256 before loading. torch-free.

Performance mode: ``latency`` (one camera: each batch is one synchronous request) or
``throughput`` (many cameras: the frames of a batch are spread over OpenVINO's optimal number
of parallel requests, AsyncInferQueue).
"""

from __future__ import annotations

from typing import cast

import numpy as np

from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import OvPrecision
from clipad.deploy.openvino_ir import compile_ir, ov_device, require_openvino
from clipad.runtime.backends.base import Backend, BackendInfo


def ir_file(artifacts: Artifacts, precision: str) -> str:
    """The IR .xml serving ``precision``; one line when the artifacts have none."""
    entry = artifacts.manifest.openvino
    if entry is None:
        raise ClipadError(f"{artifacts.root} has no OpenVINO IR; export with `clipad export --openvino`")
    if precision not in ("fp32", "bf16", "fp16", "int8"):
        raise ClipadError(f"openvino runs fp32, bf16, fp16 or int8, not '{precision}'")
    xml = entry.ir.get(cast(OvPrecision, precision)) or (entry.ir["fp32"] if precision in ("bf16", "fp16") else None)
    if xml is None:
        raise ClipadError(f"{artifacts.root} has no OpenVINO {precision} IR (it has {', '.join(entry.ir)})")
    return xml


def choose_precision(entry, capabilities: list[str]) -> str:
    """``--precision auto`` for OpenVINO: the fastest reduced precision whose quality gate passed
    (manifest ``openvino.gates``) and that this device runs natively: int8 (its IR kept; 0.36x
    ONNX Runtime FP32 against bf16's 0.56x on the AVX-512 BF16 CPU of docs/benchmarks.md), then
    bf16 (capability BF16: AMX or AVX-512 BF16), else fp32."""
    gates = (entry.gates or {}) if entry is not None else {}
    for precision in ("int8", "bf16"):
        gate = gates.get(precision)
        if gate is not None and gate.passed and precision.upper() in capabilities and precision in entry.ir:
            return precision
    return "fp32"


def auto_precision(artifacts: Artifacts, device: str) -> str:
    """``choose_precision`` with this machine's device capabilities."""
    ov = require_openvino()
    from clipad.deploy.openvino_ir import device_capabilities

    return choose_precision(artifacts.manifest.openvino, device_capabilities(ov.Core(), ov_device(device)))


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(
        self, artifacts: Artifacts, precision: str | None = "fp32", device: str = "auto", mode: str = "latency"
    ):
        require_openvino()
        self.compiled = None
        precision = precision or "fp32"
        self.device = ov_device(device)
        xml = ir_file(artifacts, precision)
        path = artifacts.verified_path(xml)
        artifacts.verified_path(xml.removesuffix(".xml") + ".bin")
        self.compiled = compile_ir(path, precision, self.device, mode)
        self.mode = mode
        self.precision = precision
        self.max_batch = artifacts.max_batch
        self.request = self.compiled.create_infer_request()
        self.queue = None
        if mode == "throughput":
            import openvino as ov

            self.queue = ov.AsyncInferQueue(
                self.compiled, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            )

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.compiled is None:
            raise ClipadError("the openvino backend was closed")
        if self.queue is None or len(images) == 1:
            out = self.request.infer({0: images})
            return np.array(out[0]), np.array(out[1])
        maps: list = [None] * len(images)
        probs: list = [None] * len(images)

        def done(request, i: int) -> None:
            maps[i] = np.array(request.get_output_tensor(0).data)
            probs[i] = np.array(request.get_output_tensor(1).data)

        self.queue.set_callback(done)
        for i in range(len(images)):
            self.queue.start_async({0: images[i : i + 1]}, userdata=i)
        self.queue.wait_all()
        return np.concatenate(maps), np.concatenate(probs)

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, self.precision, "cpu", f"OpenVINO {self.device}, {self.mode}", self.max_batch)

    def close(self) -> None:
        self.queue = None
        self.request = None
        self.compiled = None
