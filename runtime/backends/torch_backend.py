"""The PyTorch reference as a backend, rebuilt from the artifact manifest (CPU or CUDA).

``attention``: "fused" runs both attentions through ``scaled_dot_product_attention`` (the
default); "explicit" through MatMul, scale and Softmax, the form the exported graph has
(clipad.model.surgery); the maps agree to rounding, only speed and memory differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

import numpy as np
import torch

from clipad.core.choices import Attention, Device, check_served, parse_choice
from clipad.core.errors import ClipadError
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.rebuild import reference_model
from clipad.model.loading import resolve_device
from clipad.model.sdp import SDPModel
from clipad.model.surgery import DualPathViT
from clipad.runtime.backends.base import Backend, BackendInfo

if TYPE_CHECKING:
    from clipad.model.anomalydino import AnomalyDinoModel


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        artifacts: Artifacts,
        precision: Literal["fp32", "fp16"] = "fp32",
        device: str = "auto",
        attention: Attention = "fused",
    ):
        parse_choice(Attention, attention, "--attention")
        check_served("torch", precision)
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type != "cuda":
            raise ClipadError("the torch backend runs fp16 (autocast) on CUDA only")
        self.model: SDPModel | AnomalyDinoModel | None = reference_model(artifacts, self.device)
        if precision == "fp16" and not isinstance(self.model, SDPModel):
            raise ClipadError(f"the torch backend runs {artifacts.manifest.mode} in fp32 only")
        for m in self.model.modules():
            if isinstance(m, DualPathViT):
                m.fused = attention == "fused"
        self.attention = attention
        self.precision = precision
        self.max_batch = artifacts.max_batch

    @torch.no_grad()
    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            raise ClipadError("the torch backend was closed")
        x = torch.from_numpy(images).to(self.device)
        model = self.model
        # __init__ refuses fp16 for another model
        amap, prob = model.forward_fp16(x) if self.precision == "fp16" and isinstance(model, SDPModel) else model(x)
        return amap.cpu().numpy(), prob.cpu().numpy()

    def info(self) -> BackendInfo:
        detail = str(self.device) + (", explicit attention" if self.attention == "explicit" else "")
        # resolve_device takes any torch device name; clipad documents and runs cpu and cuda ones.
        return BackendInfo(self.name, self.precision, cast(Device, self.device.type), detail, self.max_batch)

    def close(self) -> None:
        """Drop the reference model (its CUDA memory returns to torch's cache); again does nothing."""
        self.model = None
