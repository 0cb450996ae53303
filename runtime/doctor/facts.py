"""What each doctor probe found: JSON-able records that cross from the probe's process to the
doctor's (``to_json`` / ``from_json``). A field that a probe could not learn is None; an import or
call that failed is kept as its one-line error."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Check = Literal["torch", "onnxruntime", "openvino", "tensorrt", "triton", "cuda"]  # what --require names
CHECKS: tuple[str, ...] = get_args(Check)


@dataclass(frozen=True)
class PythonFacts:
    version: str
    executable: str
    platform: str


@dataclass(frozen=True)
class TorchFacts:
    version: str | None  # the installed distribution; None: not installed
    cuda_build: str | None  # the CUDA torch was built for ("13.0"), read from torch/version.py; None: a CPU build
    imported: bool = False  # whether the probe imported torch (``--deep`` or ``--require torch``)
    import_error: str | None = None
    cuda_available: bool | None = None
    gpu: str | None = None


@dataclass(frozen=True)
class OnnxRuntimeFacts:
    wheels: dict[str, str]  # installed ONNX Runtime distributions -> version (more than one is a fault)
    version: str | None = None  # of the imported module
    import_error: str | None = None
    providers: list[str] = field(default_factory=list)  # compiled in (get_available_providers), not all loadable
    cuda_build: str | None = None  # the CUDA an onnxruntime-gpu wheel was built for
    tensorrt_ep_links: int | None = None  # the TensorRT major its TensorRT provider library links
    gpu_session: list[str] | None = None  # the providers a CUDA session really got (None: not tried)
    gpu_session_error: str | None = None


@dataclass(frozen=True)
class TensorRTFacts:
    version: str | None  # the installed wheels' version; None: not installed
    cuda_major: int | None = None
    distributions: list[str] = field(default_factory=list)
    module_version: str | None = None  # tensorrt.__version__ after the import
    import_error: str | None = None


@dataclass(frozen=True)
class GpuFacts:
    name: str
    compute_capability: str
    memory_gib: float


@dataclass(frozen=True)
class CudaFacts:
    cuda_python: str | None  # cuda-bindings (or cuda-python) version; None: not installed
    import_error: str | None = None
    driver_cuda: str | None = None  # newest CUDA the driver supports ("12.8"); None: no driver
    gpus: list[GpuFacts] = field(default_factory=list)
    device_error: str | None = None  # why no GPU is listed (cudaGetDeviceCount's error)


@dataclass(frozen=True)
class OpenVinoFacts:
    version: str | None
    import_error: str | None = None
    devices: dict[str, list[str]] = field(default_factory=dict)  # device -> OPTIMIZATION_CAPABILITIES
    device_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CpuFacts:
    model: str
    cores: int | None
    matrix_features: list[str]


@dataclass(frozen=True)
class TritonFacts:
    client: str | None  # tritonclient's version; None: not installed
    client_error: str | None = None
    server_binary: str | None = None
    server_problem: str | None = None


@dataclass(frozen=True)
class ChromiumFacts:
    path: str | None
    version: str | None = None


@dataclass(frozen=True)
class LibraryFacts:
    """One Python library: its version (None: not installed) and why it does not import, if so."""

    version: str | None
    error: str | None = None


@dataclass(frozen=True)
class StationFacts:
    """What `clipad station` talks through: the MQTT client (paho-mqtt), the OPC UA stack
    (asyncua), the metrics library (prometheus-client); a local Mosquitto (tests and demos only:
    a line's broker usually runs elsewhere)."""

    mqtt: LibraryFacts
    opcua: LibraryFacts
    metrics: LibraryFacts
    mosquitto: str | None = None


@dataclass(frozen=True)
class CameraFacts:
    """One GenICam device Aravis found; ``source`` is the --source value that opens it."""

    source: str
    vendor: str
    model: str
    serial: str
    address: str


@dataclass(frozen=True)
class GenICamFacts:
    aravis_error: str | None  # why Aravis cannot be used (not installed); None: it can
    devices: list[CameraFacts] = field(default_factory=list)
    error: str | None = None  # the device listing failed


@dataclass(frozen=True)
class WeightsFacts:
    model: str
    pretrained: str
    cache_dir: str | None
    cached_file: str | None = None
    error: str | None = None
    dinov2: dict[str, str] = field(default_factory=dict)  # AnomalyDINO's backbones cached: name -> file


FACTS: dict[str, type[Facts]] = {
    "python": PythonFacts,
    "torch": TorchFacts,
    "onnxruntime": OnnxRuntimeFacts,
    "tensorrt": TensorRTFacts,
    "cuda": CudaFacts,
    "openvino": OpenVinoFacts,
    "cpu": CpuFacts,
    "triton": TritonFacts,
    "chromium": ChromiumFacts,
    "station": StationFacts,
    "genicam": GenICamFacts,
    "weights": WeightsFacts,
}
Facts = (
    PythonFacts
    | TorchFacts
    | OnnxRuntimeFacts
    | TensorRTFacts
    | CudaFacts
    | OpenVinoFacts
    | CpuFacts
    | TritonFacts
    | ChromiumFacts
    | StationFacts
    | GenICamFacts
    | WeightsFacts
)


@dataclass(frozen=True)
class ProbeFailure:
    """A probe that gave no record: its process crashed, timed out or printed no JSON."""

    name: str
    error: str


@dataclass(frozen=True)
class Findings:
    """Every probe's record, or why it has none (None: not probed)."""

    python: PythonFacts | ProbeFailure | None = None
    cpu: CpuFacts | ProbeFailure | None = None
    torch: TorchFacts | ProbeFailure | None = None
    onnxruntime: OnnxRuntimeFacts | ProbeFailure | None = None
    tensorrt: TensorRTFacts | ProbeFailure | None = None
    cuda: CudaFacts | ProbeFailure | None = None
    openvino: OpenVinoFacts | ProbeFailure | None = None
    triton: TritonFacts | ProbeFailure | None = None
    chromium: ChromiumFacts | ProbeFailure | None = None
    station: StationFacts | ProbeFailure | None = None
    genicam: GenICamFacts | ProbeFailure | None = None
    weights: WeightsFacts | ProbeFailure | None = None

    @classmethod
    def of(cls, records: Mapping[str, Facts | ProbeFailure]) -> Findings:
        """Findings from probe name -> record, each checked to be its probe's type."""
        for name, record in records.items():
            if not isinstance(record, (FACTS[name], ProbeFailure)):
                raise TypeError(f"probe {name} gave a {type(record).__name__}")
        return cls(**records)  # type: ignore[arg-type]  # each record's type is checked above

    def items(self) -> list[tuple[str, Facts | ProbeFailure]]:
        """(probe name, record) of every probe that ran."""
        return [(k, v) for k in FACTS if (v := getattr(self, k)) is not None]


def to_json(facts: Facts | ProbeFailure) -> dict[str, Any]:
    return dataclasses.asdict(facts)


def from_json(name: str, data: dict[str, Any]) -> Facts:
    """The record of probe ``name`` from its JSON (unknown keys refused by the dataclass)."""
    if name == "cuda":
        data = {**data, "gpus": [GpuFacts(**g) for g in data.get("gpus", [])]}
    if name == "station":
        data = {**data, **{k: LibraryFacts(**data[k]) for k in ("mqtt", "opcua", "metrics")}}
    if name == "genicam":
        data = {**data, "devices": [CameraFacts(**d) for d in data.get("devices", [])]}
    record: Facts = FACTS[name](**data)
    return record
