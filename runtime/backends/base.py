"""The backend interface: a batch of uint8 RGB frames at model resolution in, ``anomaly_map``
float32 [B, H, W] and ``image_prob`` float32 [B] out; ``close()`` (also as a context manager)
releases what a backend holds, ``info()`` describes it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from clipad.core.choices import Attention, Device, OpenVinoMode
from clipad.core.errors import ClipadError
from clipad.deploy.runners.base import in_batches


@dataclass(frozen=True)
class OpenVinoOptions:
    """The openvino backend's options: ``mode``, OpenVINO's performance hint."""

    mode: OpenVinoMode = "latency"


@dataclass(frozen=True)
class TorchOptions:
    """The torch backend's options: ``attention``, fused (scaled_dot_product_attention) or explicit."""

    attention: Attention = "fused"


class BackendUnavailable(ClipadError):
    """The backend cannot answer now but may later (a remote server down or restarting): the
    pipeline records the batch's frames as errors and goes on instead of stopping."""


@dataclass(frozen=True)
class BackendInfo:
    """What a backend is and where it runs. device: where its work really runs (ONNX Runtime:
    its first loaded provider); detail: the provider or torch device, for people."""

    name: str
    precision: str
    device: Device
    detail: str
    max_batch: int

    def describe(self) -> str:
        return f"{self.name} {self.precision}" + (f" ({self.detail})" if self.detail else "")


class Backend(ABC):
    name: str = ""
    precision: str = "fp32"
    max_batch: int = 1
    # What the user should be told about how this backend was chosen, one line each (e.g. that
    # precision auto fell back to FP32); serving commands print them beside describe().
    notes: tuple[str, ...] = ()

    @abstractmethod
    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images: uint8 [b, H, W, 3] with b <= max_batch."""

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB [B, H, W, 3] -> (float32 [B, H, W], float32 [B]); batches above max_batch are split."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ClipadError(f"backend input must be uint8 [B, H, W, 3], got {images.dtype} {list(images.shape)}")
        return in_batches(self._infer, images, self.max_batch)

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, self.precision, "cpu", "", self.max_batch)

    def describe(self) -> str:
        return self.info().describe()

    def close(self) -> None:  # noqa: B027 - deliberately not abstract: a no-op for backends that hold nothing
        """Release sessions, engines and device memory; calling it again does nothing."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
