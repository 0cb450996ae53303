"""Opening and choosing backends: ONNX Runtime, the PyTorch reference and TensorRT, behind one
interface (``base.Backend``) used by every consumer: the runtime, `clipad predict`, calibration,
parity and bench. Backends check the manifest's sha256 of their model file before loading it;
a failed check (``IntegrityError``) is never a reason to try another backend or precision.

OpenVINO (``openvino``) is opened only by name: ``auto`` never picks it, because its precision
is a per-machine decision (bf16 or int8 only where their gates passed, see
clipad.deploy.openvino_ir) and ONNX Runtime serves the same graph on every CPU; its ``auto``
precision is fp32. ``device`` cpu keeps everything on the CPU: the TensorRT backend is refused before tensorrt,
cuda-python or the plan is touched, ``auto`` never tries it, and ONNX Runtime gets the CPU
execution provider only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, cast

from clipad.core.choices import (
    BACKENDS,
    BackendName,
    Device,
    OpenVinoMode,
    Precision,
    ServedPrecision,
    check_served,
    parse_choice,
)
from clipad.core.errors import ClipadError, IntegrityError
from clipad.deploy.artifacts import Artifacts
from clipad.deploy.manifest import PLAN
from clipad.runtime.backends.base import Backend, BackendInfo, BackendUnavailable, OpenVinoOptions, TorchOptions

if TYPE_CHECKING:
    from clipad.runtime.backends.triton_backend import TritonTarget

    # One backend's options: the triton backend's server, OpenVINO's hint, torch's attention form.
    BackendOptions = TritonTarget | OpenVinoOptions | TorchOptions

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendInfo",
    "BackendName",
    "BackendUnavailable",
    "Device",
    "OpenVinoOptions",
    "TorchOptions",
    "open_backend",
    "select_backend",
]


def _on_cpu(device: str) -> bool:
    return device == "cpu"


def open_backend(
    artifacts: Artifacts,
    name: BackendName,
    precision: ServedPrecision | None = "fp32",
    device: str = "auto",
    options: BackendOptions | None = None,
) -> Backend:
    """The named backend for ``artifacts``; one line when it cannot run here. ``precision``: one
    that the backend serves (``choices.SERVES``); None: what the model has (TensorRT, Triton) or
    fp32. ``device``: auto, cpu, cuda (cuda:N for ONNX Runtime and torch; OpenVINO also takes its
    own names). ``options``: the named backend's record (``triton_backend.TritonTarget``, required
    for triton; ``OpenVinoOptions``; ``TorchOptions``); defaults otherwise."""
    parse_choice(BackendName, name, "--backend")
    if precision is not None:
        check_served(name, precision)
    if name == "triton":
        from clipad.runtime.backends.triton_backend import TritonBackend, TritonTarget

        if not isinstance(options, TritonTarget):
            raise ClipadError("--backend triton needs --url grpc://HOST:PORT or http://HOST:PORT")
        return TritonBackend(artifacts, options, None if precision is None else _graph_precision(precision))
    if name == "openvino":
        from clipad.runtime.backends.openvino_backend import OpenVinoBackend

        mode = options.mode if isinstance(options, OpenVinoOptions) else "latency"
        return OpenVinoBackend(artifacts, precision or "fp32", device, mode)
    if name == "onnxruntime":
        from clipad.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(artifacts, _graph_precision(precision), device)
    if name == "torch":
        from clipad.runtime.backends.torch_backend import TorchBackend

        attention = options.attention if isinstance(options, TorchOptions) else "fused"
        return TorchBackend(artifacts, cast(Literal["fp32", "fp16"], precision or "fp32"), device, attention)
    if name == "tensorrt":
        if PLAN not in artifacts.manifest.files:  # listed but missing: IntegrityError when it is read
            raise ClipadError(f"{artifacts.root} has no {PLAN}; build one with `clipad export --engine`")
        if _on_cpu(device):  # refused before tensorrt, cuda-python or the plan is touched
            raise ClipadError(
                "the tensorrt backend runs on an NVIDIA GPU only, not with --device cpu; "
                "use --backend onnxruntime or torch there"
            )
        from clipad.runtime.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(artifacts, _graph_precision(precision) if precision else None, device)
    raise AssertionError(f"backend {name} has no opener")


def _graph_precision(precision: ServedPrecision | None) -> Precision:
    """A precision of an exported graph or plan (``check_served`` has refused bf16 for them)."""
    return cast(Precision, precision or "fp32")


def _onnxruntime_auto(artifacts: Artifacts, device: str) -> Backend:
    """ONNX Runtime with precision auto: the FP16 graph when a GPU execution provider really
    loads for it, else the FP32 graph.

    ``get_available_providers()`` only says which providers the wheel was built with, so it only
    decides whether trying the FP16 graph is worth a session. The FP16 session's own
    ``get_providers()`` decides: when it fell back to the CPU EP, that session is closed and the
    FP32 graph is served, with a note saying why (the FP16 graph on the CPU is slower than the
    FP32 one and less accurate, so FP16 is never the better choice there).
    """
    from clipad.deploy.runners.onnxruntime import GPU_PROVIDERS

    if _on_cpu(device) or "fp16" not in artifacts.manifest.precisions or not _ort_gpu_listed():
        return open_backend(artifacts, "onnxruntime", "fp32", device)
    gate = (artifacts.manifest.parity.gates or {}).get("fp16")
    if gate is not None and not gate.passed:  # judged on labelled images at export and found worse than FP32
        fp32 = open_backend(artifacts, "onnxruntime", "fp32", device)
        fp32.notes = (
            *fp32.notes,
            f"precision auto: FP32, because the FP16 graph failed its quality gate (pixel AUROC drop "
            f"{gate.pixel_drop_points:.2f}, image {gate.image_drop_points:.2f} points > {gate.max_drop_points:g})",
        )
        return fp32
    try:
        fp16 = open_backend(artifacts, "onnxruntime", "fp16", device)
    except IntegrityError:
        raise  # a changed FP16 graph is not a reason to serve the FP32 one
    except ClipadError as err:
        why = f"the FP16 graph could not be opened ({err})"
    else:
        if fp16.info().device == "cuda":
            return fp16
        fp16.close()
        why = (
            f"no GPU execution provider ({', '.join(GPU_PROVIDERS)}) loaded for the FP16 graph, which would have "
            "run on CPUExecutionProvider"
        )
    fp32 = open_backend(artifacts, "onnxruntime", "fp32", device)
    fp32.notes = (*fp32.notes, f"precision auto: FP32, because {why}")
    return fp32


def select_backend(
    artifacts: Artifacts,
    name: BackendName | Literal["auto"] = "auto",
    device: str = "auto",
    precision: ServedPrecision | Literal["auto"] = "auto",
    triton: TritonTarget | None = None,
    openvino: OpenVinoOptions | None = None,
) -> Backend:
    """``auto``: TensorRT when a usable plan is there (never with device cpu), else ONNX Runtime,
    else the torch reference. A file that is listed in the manifest but missing or changed
    (``IntegrityError``) stops the choice there: it never falls back to the next backend.

    ``precision`` ``auto``: ONNX Runtime takes the FP16 graph when it exists and a GPU execution
    provider really loads for it (the session's providers, not the wheel's list), the FP32 one
    otherwise, or when the FP16 graph failed its AUROC quality gate (never INT8 unasked). An
    explicit precision (fp32, fp16, int8) is passed to the backend, which says in one line if it
    cannot. ``triton``: the server of backend triton; ``openvino``: OpenVINO's options.
    """
    parse_choice(("auto", *BACKENDS), name, "--backend")
    if name == "triton":  # the server's model decides the precision; an explicit one is checked against it
        return open_backend(artifacts, name, None if precision == "auto" else precision, device, triton)
    openvino = openvino or OpenVinoOptions()
    parse_choice(OpenVinoMode, openvino.mode, "--openvino-mode")
    if name != "auto":
        if precision == "auto":
            if name == "onnxruntime":
                return _onnxruntime_auto(artifacts, device)
            if name == "openvino":
                from clipad.runtime.backends.openvino_backend import auto_precision

                return open_backend(artifacts, name, auto_precision(artifacts, device), device, openvino)
            return open_backend(artifacts, name, "fp32" if name == "torch" else None, device)
        be = open_backend(artifacts, name, precision, device, openvino)
        if be.precision != precision:  # a TensorRT plan has the precision it was built with
            be.close()
            raise ClipadError(f"the {name} model here is {be.precision}, not {precision}")
        return be
    engine = artifacts.manifest.engine
    candidates: list[tuple[str, Callable[[], Backend]]] = []
    # A plan the manifest lists is tried even when its file is gone, so that its absence stops the run.
    if (
        not _on_cpu(device)
        and PLAN in artifacts.manifest.files
        and precision in ("auto", engine.precision if engine else None)
    ):
        candidates.append(("tensorrt", lambda: open_backend(artifacts, "tensorrt", None, device)))
    if precision == "auto":
        candidates.append(("onnxruntime", lambda: _onnxruntime_auto(artifacts, device)))
    else:
        candidates.append(("onnxruntime", lambda: open_backend(artifacts, "onnxruntime", precision, device)))
    if precision in ("auto", "fp32"):
        candidates.append(("torch", lambda: open_backend(artifacts, "torch", "fp32", device)))
    problems = []
    for label, opener in candidates:
        try:
            return opener()
        except IntegrityError:
            raise  # a changed or missing artifact file stops the run: another backend would hide it
        except ClipadError as err:
            problems.append(f"{label}: {err}")
    raise ClipadError("no backend can serve these artifacts: " + "; ".join(problems))


def _ort_gpu_listed() -> bool:
    """Whether this onnxruntime was built with a GPU execution provider. Necessary, not
    sufficient: whether one loads is only known from a session (``_onnxruntime_auto``)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    from clipad.deploy.runners.onnxruntime import GPU_PROVIDERS

    return any(p in ort.get_available_providers() for p in GPU_PROVIDERS)
