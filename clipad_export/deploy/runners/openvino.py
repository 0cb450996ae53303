"""OpenVINO runner: an IR compiled with an explicit precision (``openvino_ir.compile_ir``: never
OpenVINO's device default), run in batches.

Performance mode: ``latency`` (each batch is one synchronous request) or ``throughput`` (the
frames of a batch are spread over OpenVINO's optimal number of parallel requests). The parallel
requests are started and then waited for from the calling thread: no Python callback runs on
OpenVINO's threads, so none of them ever waits for the GIL while a request or the compiled
model is being destroyed. Imports openvino only when opened; never torch."""

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
        self.parallel: list[Any] = []
        if mode == "throughput":
            n = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self.parallel = [self.compiled.create_infer_request() for _ in range(max(1, n))]

    def infer(self, images: np.ndarray) -> Outputs:
        if self.compiled is None:
            raise ClipadError("the openvino model was closed")
        if not self.parallel or len(images) == 1:
            out = self.request.infer({0: images})
            return np.array(out[0], dtype=np.float32), np.array(out[1], dtype=np.float32)
        maps: list[np.ndarray] = []
        probs: list[np.ndarray] = []
        for start in range(0, len(images), len(self.parallel)):
            chunk = images[start : start + len(self.parallel)]
            running = self.parallel[: len(chunk)]
            for request, i in zip(running, range(len(chunk)), strict=True):
                request.start_async({0: chunk[i : i + 1]})
            for request in running:
                request.wait()
                maps.append(np.array(request.get_output_tensor(0).data, dtype=np.float32))
                probs.append(np.array(request.get_output_tensor(1).data, dtype=np.float32))
        return np.concatenate(maps), np.concatenate(probs)

    def close(self) -> None:
        self.parallel = []
        self.request = None
        self.compiled = None
