"""The one prediction record: what every sink, the viewer, `clipad predict` and the events file get.

A ``Prediction`` is built once per image by the scoring step (``clipad.runtime.scoring``) and
written unchanged by every consumer, so events, predictions, snapshots and the live page can
never disagree about a frame. JSON keys and their order are the events contract (README).
A ``FrameResult`` carries one streamed frame from the pipeline to every sink: the record with
the image, its anomaly map and the rendered overlay.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import numpy as np

Label = Literal["normal", "anomalous", "error"]  # "error": no score for this frame (see ``error``)


@dataclass(frozen=True)
class OutputFiles:
    """Files written for one prediction, relative to the output folder (None: not written).

    Stems such as MVTec's ``000.png`` repeat across folders; they are saved as ``000.npy``,
    ``000_2.npy``, ... and these names link each file back to its source."""

    map: str | None = None
    mask: str | None = None
    overlay: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"map": self.map, "mask": self.mask, "overlay": self.overlay}


@dataclass(frozen=True)
class Prediction:
    """One scored image or frame.

    image_prob: the model's abnormal-class probability; map_max: the anomaly map's maximum (the
    map-level signal); fused, score (in [0, 1], 0.5 at the threshold), label and defect_area
    (fraction of pixels at or above the pixel threshold): None until the artifacts are calibrated.
    A frame that could not be scored (the backend failed, or gave NaN or infinite values) has
    label "error", ``error`` saying why, and None for every value that is not finite: it is
    never "normal".
    frame, time and latency_ms: the frame's index in its source, its capture time (Unix seconds)
    and the time from capture to scores (ms), for streamed frames; None for `clipad predict`.
    """

    source: str
    image_prob: float | None
    map_max: float | None
    fused: float | None = None
    score: float | None = None
    label: Label | None = None
    defect_area: float | None = None
    frame: int | None = None
    time: float | None = None
    latency_ms: float | None = None
    files: OutputFiles | None = field(default=None)
    error: str | None = None

    @classmethod
    def failed(cls, source: str, error: str) -> Prediction:
        """A frame that has no score, and why."""
        return cls(source, None, None, label="error", error=error)

    @property
    def anomalous(self) -> bool:
        return self.label == "anomalous"

    def with_stream(self, frame: int, time: float, latency_ms: float) -> Prediction:
        return replace(self, frame=frame, time=time, latency_ms=latency_ms)

    def with_files(self, files: OutputFiles) -> Prediction:
        return replace(self, files=files)

    def event(self) -> dict[str, Any]:
        """The events-file object (one line of events.jsonl, and /status.json's ``last``); values
        that are not finite become null, so the object is always strict JSON."""
        return {
            "frame": self.frame,
            "source": self.source,
            "time": _finite(self.time),
            "image_prob": _finite(self.image_prob),
            "map_max": _finite(self.map_max),
            "fused": _finite(self.fused),
            "score": _finite(self.score),
            "label": self.label,
            "defect_area": _finite(self.defect_area),
            "latency_ms": _finite(self.latency_ms),
            "error": self.error,
        }

    def prediction(self) -> dict[str, Any]:
        """The predictions.jsonl object of `clipad predict`."""
        event = self.event()
        out: dict[str, Any] = {
            k: event[k] for k in ("source", "image_prob", "map_max", "fused", "score", "label", "defect_area", "error")
        }
        out["files"] = (self.files or OutputFiles()).to_json()
        return out


@dataclass(frozen=True)
class FrameResult:
    """One frame for the sinks, built once by the pipeline: ``record`` (its Prediction), ``image`` (RGB
    uint8 [H, W, 3] as captured), ``amap`` (its anomaly map, float32 at model resolution) and ``view``
    (the rendered overlay, RGB uint8 [H, W, 3]; None when no sink shows one); ``fps``: the source's
    own frame rate where it delivers every frame (a video file), else None."""

    record: Prediction
    image: np.ndarray
    amap: np.ndarray
    view: np.ndarray | None = None
    fps: float | None = None


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def to_json_line(obj: dict[str, Any]) -> str:
    """One strict JSON line (no NaN or Infinity tokens, which JSON readers reject)."""
    return json.dumps(obj, allow_nan=False) + "\n"
