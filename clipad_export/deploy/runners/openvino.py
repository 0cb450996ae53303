"""OpenVINO runner: an IR compiled with an explicit precision (``openvino_ir.compile_ir``: never
OpenVINO's device default), run in batches.

Performance mode: ``latency`` (each batch is one synchronous request) or ``throughput`` (the
frames of a batch are spread over OpenVINO's optimal number of parallel requests,
AsyncInferQueue). Imports openvino only when opened; never torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clipad.core.choices import OpenVinoMode
from clipad.core.errors import ClipadError
from clipad.deploy.manifest import OvPrecision
from clipad.deploy.openvino_ir import compile_ir
from clipad.deploy.runners.base import Outputs, Runner


class OpenVinoRunner(Runner):
    """``xml`` (with its .bin) compiled for ``precision`` on OpenVINO ``device`` (CPU, GPU, GPU.N,
    AUTO: ``openvino_ir.ov_device``) in performance ``mode``."""

    def __init__(
        self,
        xml: Path,
        precision: OvPrecision,
        max_batch: int,
        device: str = "CPU",
        mode: OpenVinoMode = "latency",
    ):
        self.compiled: Any = None
        self.compiled = compile_ir(xml, precision, device, mode)
        self.max_batch = max_batch
        self.request: Any = self.compiled.create_infer_request()
        self.queue: Any = None
        if mode == "throughput":
            import openvino as ov

            self.queue = ov.AsyncInferQueue(
                self.compiled, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            )

    def infer(self, images: np.ndarray) -> Outputs:
        if self.compiled is None:
            raise ClipadError("the openvino model was closed")
        if self.queue is None or len(images) == 1:
            out = self.request.infer({0: images})
            return np.array(out[0], dtype=np.float32), np.array(out[1], dtype=np.float32)
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

    def close(self) -> None:
        self.queue = None
        self.request = None
        self.compiled = None
