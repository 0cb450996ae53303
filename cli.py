"""`clipad`: thin Typer commands over the clipad packages.

Errors that the user can act on are printed as one line with a non-zero exit; a traceback
only with ``clipad --debug ...``. Each option is declared once (``_o``), the shared ones in
groups shown as help panels (``_panel``); ``_command`` hands a command's body its options as one
namespace, from which the body builds the library's records; results describe themselves.
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer
import typer.core

from clipad.core.choices import CacheDtype, Dataset, Int8Backend, Method, OpenVinoMode, RvsMethod, RvsProfile, metavar
from clipad.core.errors import ClipadError
from clipad.core.lists import comma_list, empty_values
from clipad.core.packages import describe_failure, quiet_third_party
from clipad.core.progress import progress_bars
from clipad.core.writable import check_writable
from clipad.methods.registry import METHODS, get_method

# `clipad --help` lists the commands in the order of the work, not of this file.
WORKFLOW = tuple(
    "demo doctor synth eval train export reference parity calibrate predict run station bench triton-server".split()
)
REQUIRED, KEYWORD = inspect.Parameter.empty, inspect.Parameter.KEYWORD_ONLY
Opt = tuple[str, Any, Any, dict[str, Any]]  # parameter name, type, default, typer.Option's arguments (flag, help, ...)


class _WorkflowGroup(typer.core.TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        return sorted(super().list_commands(ctx), key=lambda n: WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW))


app = typer.Typer(
    name="clipad",
    cls=_WorkflowGroup,
    help="Zero-shot industrial anomaly detection with CLIP-AD: reference, evaluation, export and runtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
reference_app = typer.Typer(help="The normal-reference memory of an export (good images baked into the graph).")
reference_app.info.no_args_is_help = True
app.add_typer(reference_app, name="reference")
_state = {"debug": False}
_say = functools.partial(typer.echo, err=True)


def _o(flag: str, default: Any = REQUIRED, help: str = "", kind: Any = None, name: str = "", **kw: Any) -> Opt:
    """One option (an argument when ``flag`` has no dashes; more flags: ``aliases=("--x",)``); its type is
    the default's unless ``kind`` (``X | None`` for a None default); its parameter is named after the flag
    unless ``name``."""
    kind = kind or (Path if isinstance(default, Path) else type(default))
    kind = kind | None if default is None else kind
    return (name or flag.lstrip("-").replace("-", "_").lower(), kind, default, {"flag": flag, "help": help, **kw})


def _flat(opts: tuple[Any, ...]) -> list[Opt]:
    """Options out of options, groups and groups of groups (an option: a tuple that starts with its name)."""
    return [opt for item in opts for opt in (_flat(item) if isinstance(item[0], tuple) else [item])]


def _panel(title: str, *opts: Any, but: tuple[str, ...] = ()) -> tuple[Opt, ...]:
    """``opts`` shown under ``title`` in the help, but those named in ``but``."""
    return tuple((n, k, d, {**kw, "rich_help_panel": title}) for n, k, d, kw in _flat(opts) if n not in but)


def _command(*opts: Any, where: typer.Typer = app, name: str = ""):
    """Register the decorated ``body(o)`` as a command named after it (``_triton_server``: triton-server), its
    docstring the help; ``opts``: its options and groups, in help order; the body reads them as ``o.<name>``."""

    def register(body):
        def callback(**values):
            for pname, _, _, spec in [o for o in _flat(opts) if "writes" in o[3] and values[o[0]] is not None]:
                check_writable(values[pname], spec["flag"], spec["writes"] == "folder")  # outputs: before any work
            return body(SimpleNamespace(**values))

        params = [inspect.Parameter("ctx", KEYWORD, annotation=typer.Context)]  # Typer passes the context
        for pname, kind, default, spec in _flat(opts):
            kw = {k: v for k, v in spec.items() if k not in ("flag", "aliases", "writes")}  # writes: an output path
            flags = (spec["flag"], *spec.get("aliases", ()))
            info = typer.Option(*flags, **kw) if spec["flag"].startswith("-") else typer.Argument(**kw)
            params.append(inspect.Parameter(pname, KEYWORD, default=default, annotation=Annotated[kind, info]))
        callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # what Typer reads
        where.command(name or body.__name__.strip("_").replace("_", "-"), help=body.__doc__)(callback)
        return body

    return register


def _options_given(ctx: typer.Context, but: set[str]) -> list[str]:
    """The command's options given on the command line, but those named in ``but``."""
    sources = {p.opts[0]: ctx.get_parameter_source(p.name) for p in ctx.command.params if p.name not in but}
    return [opt for opt, source in sources.items() if getattr(source, "name", None) == "COMMANDLINE"]


def _fields(o: SimpleNamespace, record: Any) -> dict[str, Any]:
    """The options of ``o`` that are fields of the dataclass ``record``, by name."""
    return {f.name: getattr(o, f.name) for f in fields(record) if hasattr(o, f.name)}


def _method(o: SimpleNamespace) -> SimpleNamespace:
    """``o`` with ``method`` taken from --mode, the hidden old name of --method (one line when both differ)."""
    if o.mode is not None:
        if o.method not in ("sdp", o.mode):  # "sdp": --method's default
            raise ClipadError(
                f"--mode is the old name of --method: give one of them, not --method {o.method} --mode {o.mode}"
            )
        o.method = get_method(o.mode, "--mode").name
    return o


def _weights(o: SimpleNamespace):
    from clipad.model.loading import WeightSpec

    return WeightSpec(**_fields(o, WeightSpec)).checked(_options_given(o.ctx, set()))


def _triton(o: SimpleNamespace, backend: str):
    from clipad.runtime.serving import triton_target

    inflight = getattr(o, "triton_inflight", 1)  # parity sends one request at a time
    target = (o.url, o.triton_model, o.triton_version, o.triton_timeout, inflight, o.triton_shm)
    return triton_target(backend, *target, given=_options_given(o.ctx, set()))


def _served(o: SimpleNamespace, artifacts: Path | None, triton: Any, **kw: Any):
    from clipad.runtime.serving import open_served

    served = open_served(artifacts, o.backend, o.device, o.precision, triton=triton, **kw)
    for note in served.notes:
        _say(note)
    return served


def _finish(o: SimpleNamespace, prepared: Any) -> None:
    """Run a prepared request (progress bars unless --quiet); print what its result says, its notes on stderr."""
    with progress_bars(not o.quiet) as tasks:
        result = prepared.run(tasks)
    typer.echo(result.describe())
    for line in result.notes():
        _say(line)


QUIET = _o("--quiet", False, "No progress bars.")
KEEP = [_o(f"--{x}-max-{u}", 0.0, h) for x in ("snapshots", "segments") for u, h in (("mb", "MiB"), ("age-h", "Hours"))]
DEVICE, CPU = (_o("--device", d, "Where the model runs.", metavar="[auto|cpu|cuda|cuda:N]") for d in ("auto", "cpu"))
ARTIFACTS = _o("--artifacts", None, "Artifact directory (default: the only one under ./artifacts).", Path)
WEIGHTS = _panel(
    "Model weights",
    _o("--model", "ViT-B-16-plus-240", "open_clip architecture (clipad-tiny: the small test config)."),
    _o("--pretrained", "laion400m_e31", "open_clip pretrained tag; downloaded once, then cached."),
    _o("--weights", None, "Offline open_clip state dict (.safetensors, or torch, read weights_only).", Path),
    _o("--random-weights", False, "Seeded random weights (smoke tests; heatmaps are meaningless)."),
    (_o("--seed", 0, "Seed for --random-weights."), _o("--cache-dir", None, "Download cache.", Path, writes="folder")),
)
RVS = _o("--rvs", "dbscan", "Representative vector method.", metavar=metavar(RvsMethod))
_METHODS = "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + "."
METHOD = _panel(
    "Method",
    (_o("--method", "sdp", _METHODS, metavar=metavar(Method)), _o("--mode", None, "", str, hidden=True)),
    (_o("--heads", None, "SDP+ heads (.safetensors, or the official .pth).", Path), RVS),
    _o("--prompts", "industrial", "Prompt set (industrial, hemorrhage, tumor, polyp) or a YAML/JSON file."),
)
GATE = _panel(
    "Quality gate",
    _o("--gate-data", None, "Labelled held-out images (MVTec layout) of the category: AUROC drop gated.", Path),
    _o("--max-auroc-drop", 0.5, "The quality gate's limit in AUROC points."),
)
# The model option of Triton is --triton-model: elsewhere --model names the open_clip architecture.
TRITON = _panel(
    "Triton (--backend triton)",
    (_o("--url", None, "The server, grpc://HOST:8001 or http://HOST:8000.", str), _o("--triton-timeout", 10.0, "s")),
    _o("--triton-model", None, "Model name (default <category>_python; _onnx or _trt on a GPU Triton).", str),
    _o("--triton-version", "", "Model version (default: the server's version policy)."),
    _o("--triton-inflight", 2, "Requests in flight per client (a batch is split into this many).", min=1),
    _o("--triton-shm", False, "System shared memory for tensors (client and server on one host)."),
)
BACKENDS, SERVED = "[auto|tensorrt|onnxruntime|torch|openvino|triton]", "[auto|fp32|fp16|bf16|int8]"
SERVING = _panel(
    "Serving",
    (ARTIFACTS, _o("--backend", "auto", "auto: the fastest here (not openvino, triton).", metavar=BACKENDS)),
    _o("--precision", "auto", "auto: fp16 on a GPU, else fp32; openvino: gated int8/bf16.", metavar=SERVED),
    DEVICE,
    _o("--openvino-mode", "latency", "latency (one camera) or throughput (many).", metavar=metavar(OpenVinoMode)),
)
CATEGORIES = _o("--categories", None, "Comma-separated categories (default: all).", str)
DATASET = (_o("--dataset", help="Dataset layout.", kind=str, metavar=metavar(Dataset)), _o("--root", kind=Path))
SHOTS = _o("--shots", None, "K good images per category (eval: MVTec train split; export: of --reference).", int)
MEMORY = _o("--memory-patches", None, "At most N memory patches per stage (coreset; default 1024, DINO: all).", int)
DINO = _panel(  # DinoOptions (clipad.methods.anomalydino); None: not given
    "AnomalyDINO (--method anomalydino)",
    (_o("--backbone", None, "dinov2_vit{s,b,l}14; default s.", str), _o("--resolution", None, "px; default 448.", int)),
    (_o("--rotations", False, "Also rotated good images."), _o("--masking", None, "auto (default), on, off.", str)),
)


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and third-party warnings.")] = False):
    _state["debug"] = debug
    if not debug:
        quiet_third_party()  # clipad says what went wrong in its own one line


@_command(
    (_o("--out", Path("synth"), "MVTec AD layout.", writes="folder"), _o("--n-train", 4, "Good train images each.")),
    (_o("--n-good", 6, "Good test images per category."), _o("--n-defect", 4, "Per defect type and category.")),
    (_o("--width", 160, "Image width in pixels."), _o("--height", 128, "Image height in pixels.")),
    (_o("--seed", 0, "Random seed; the same arguments give identical files."), _o("--force", False, "Replace --out.")),
    _o("--defect-scale", 1.0, "Enlarge the pasted defects (1 = default sizes).", min=0.2),
)
def _synth(o: SimpleNamespace) -> None:
    """Write a small deterministic synthetic dataset (textures and objects with pasted defects, exact masks)."""
    from clipad.data.synth import describe_synthetic, make_synthetic

    counts = make_synthetic(o.out, o.n_train, o.n_good, o.n_defect, o.width, o.height, o.seed, o.force, o.defect_scale)
    typer.echo(describe_synthetic(counts, o.out))


@_command(
    *DATASET,
    (CATEGORIES, _o("--out", Path("results.json"), "results.json path.", writes="file")),
    METHOD,
    (_o("--sigma", None, "Map smoothing (default 8; 2 for SDP+ on VisA).", float), _o("--batch-size", 8, min=1)),
    _panel("Normal reference", SHOTS, _o("--shot-seeds", "0", "Comma-separated seeds: mean and spread."), MEMORY),
    (DINO, *WEIGHTS, DEVICE, QUIET),
    name="eval",
)
def _eval(o: SimpleNamespace) -> None:
    """Evaluate SDP/SDP+ (with --shots: the normal reference or AnomalyDINO) on a test split; writes results.json."""
    from clipad.evaluation.run import EvalRun

    _finish(o, EvalRun(weight_spec=_weights(o), **_fields(_method(o), EvalRun)).prepare(_say))


@_command(
    _o("--category", help="Category name (names the artifacts and Triton models).", kind=str),
    _o("--object-name", None, "Object name in the prompts (default: the category, verbatim).", str),
    METHOD,
    _o("--rvs-profile", "mvtec", "DBSCAN: mvtec (eps 0.5, 15) or visa (eps 1.5, 25).", metavar=metavar(RvsProfile)),
    (_o("--sigma", None, "Map smoothing sigma (default 8).", float), _o("--max-batch", 8, "Largest batch served.")),
    _o("--precision", "all", "fp32, fp16, all (fp16 within limits), int8 (--engine).", metavar="[fp32|fp16|all|int8]"),
    (_o("--engine", False, "A TensorRT engine (GPU)."), _o("--triton-repo", None, "Also this.", Path, writes="folder")),
    _o("--opt-batch", None, "With --engine: the batch TensorRT tunes for (default min(8, max batch)).", int),
    _panel("Normal reference", _o("--reference", None, "Good images baked in (folder, glob).", str), SHOTS, MEMORY),
    _o("--openvino", False, "Also the OpenVINO IRs (FP32, NNCF INT8), parity-checked (clipad\\[openvino])."),
    (*GATE, _o("--out", None, "Artifact directory (default artifacts/<category>).", Path, writes="folder")),
    (DINO, *WEIGHTS, CPU, QUIET),
)
def _export(o: SimpleNamespace) -> None:
    """Export one category: RVS text vectors baked into an ONNX graph (FP32 and mixed FP16), parity-checked."""
    from clipad.deploy.request import ExportRequest

    request = ExportRequest(**_fields(_method(o), ExportRequest))
    request.refuse_unused(_options_given(o.ctx, but=ExportRequest.INT8_ENGINE_OPTIONS))
    if request.precision == "int8":
        return typer.echo(request.int8_engine())
    _finish(o, request.prepare(_weights(o), _say))


@_command(
    _o("--artifacts", help="Artifact directory from `clipad export`.", kind=Path),
    _o("--backends", "onnxruntime", "Comma-separated: onnxruntime, tensorrt, openvino, torch, triton (--url)."),
    _o("--images", None, "Folder of images to compare on (default: built-in synthetic inputs).", Path),
    (CPU, _o("--json", None, "Also write the rows as JSON.", Path, writes="file")),
    _panel("Triton (--backend triton)", TRITON, but=("triton_inflight",)),
)
def _parity(o: SimpleNamespace) -> None:
    """Compare the exported backends with the FP32 PyTorch reference (on the CPU) and print a table."""
    from clipad.runtime.parity_check import check_parity

    names = comma_list(o.backends, "--backends")
    triton = _triton(o, "triton" if "triton" in names else "")
    if not check_parity(o.artifacts, names, o.images, o.device, triton, typer.echo, o.json):
        raise typer.Exit(1)


@_command(
    _o("--camera", None, "Camera index (repeatable).", list[int], name="cameras"),
    _o("--source", None, "Video, folder, glob, rtsp/http URL, gige:// or u3v:// camera.", list[str], name="sources"),
    SERVING,
    (_o("--save", None, "Overlay video (.mp4, .avi).", Path), _o("--events", None, "JSON Lines (appended).", Path)),
    _o("--events-max-mb", 0.0, "Rotate the events file at this size (events.jsonl.1 ... .5); 0: never."),
    _o("--segment-minutes", 0.0, "Cut the --save video into files of this many minutes; 0: one file."),
    _o("--snapshots", None, "Folder for anomalous frames: original, overlay, raw map, mask.", Path),
    _o("--snapshot-interval", 1.0, "At most one snapshot per source every this many seconds (0: all)."),
    _panel("Retention of the --snapshots, --save files this tool wrote: oldest first; 0: none", *KEEP),
    (_o("--show", False, "OpenCV window with the overlay."), _o("--serve", None, "HOST:PORT of a live viewer.", str)),
    (_o("--max-frames", None, "Stop after this many frames.", int, min=1), _o("--status-every", 5.0, "Seconds.")),
    TRITON,
    name="run",
)
def _run(o: SimpleNamespace) -> None:
    """Stream frames from cameras, videos or folders through the exported model; emit heatmaps and records."""
    from clipad.runtime.run import RunConfig, run_stream

    cfg = RunConfig(**_fields(o, RunConfig))
    cfg.check()  # before any model work
    run_stream(cfg, _served(o, o.artifacts, _triton(o, o.backend), mode=o.openvino_mode), _say)


@_command(
    _o("--recipe", None, "NAME=ARTIFACTS_DIR, calibrated (repeatable).", list[str], name="recipes", metavar="NAME=DIR"),
    (_o("--active", None, "The active recipe (default: the first).", str), _o("--queue", 16, "Jobs waiting.", min=1)),
    _o("--deadline-ms", None, "Answer timeout when a job has no verdict within this.", float),
    (_o("--events", None, "JSON Lines of every result.", Path, writes="file"), _o("--serve", None, "HOST:PORT.", str)),
    (_o("--replay", None, "Images to trigger on (folder, glob, list file).", str), *SERVING[1:4]),
    (_o("--source", None, "Camera/stream for triggers without an image.", str), _o("--name", None, "Station.", str)),
    (_o("--image-root", None, "Trigger image paths: in it.", Path), _o("--trace", None, "", Path, writes="file")),
    _panel(
        "Line (passwords: a FILE or $VAR, never on the command line)",
        _o("--mqtt", None, "Broker, mqtt://USER@HOST:PORT/TOPIC_ROOT (mqtts://: TLS).", str),
        (_o("--mqtt-password", None, "", str, metavar="FILE|$VAR"), _o("--spool", None, "", Path, writes="folder")),
        (_o("--mqtt-ca", None, "CA (mqtts).", Path), _o("--mqtt-cert", None, "Client cert.", Path)),
        (_o("--mqtt-key", None, "Its key.", Path), _o("--opcua", None, "Server endpoint, opc.tcp://HOST:PORT", str)),
        _o("--opcua-user", None, "A user who may log in (repeatable).", list[str], metavar="NAME=FILE|$VAR"),
        (_o("--opcua-certs", None, "Server cert.", Path), _o("--opcua-trust", None, "Client cert.", list[Path])),
    ),
)
def _station(o: SimpleNamespace) -> None:
    """Inspect triggered parts (OK, NG, error, timeout) with recipes; results to the events file and /metrics."""
    from clipad.runtime.station.run import StationRun

    StationRun(**_fields(o, StationRun)).run(_say)


@_command(
    (_o("SOURCE", help="Image file, folder or glob.", kind=str), SERVING),
    (_o("--out", Path("predictions"), "Output folder for predictions.jsonl.", writes="folder"), QUIET),
    (_o("--save-maps", False, "Also maps/<stem>.npy (float32)."), _o("--save-overlays", False, "And overlays/.png.")),
    TRITON,
)
def _predict(o: SimpleNamespace) -> None:
    """Score images: one record per image in OUT/predictions.jsonl."""
    from clipad.runtime.predict import predict

    served = _served(o, o.artifacts, _triton(o, o.backend), mode=o.openvino_mode)
    with progress_bars(not o.quiet) as tasks:
        res = predict(served.backend, o.source, o.out, served.artifacts.geometry, served.calibration, tasks,
                      o.save_maps, o.save_overlays)  # fmt: skip
    for line in res.warnings():
        _say(line)
    typer.echo(res.describe(o.out))


@_command(_o("IMAGES", help="Good images to add: folder, file or glob.", kind=str), ARTIFACTS, CPU, QUIET,
          where=reference_app, name="add")  # fmt: skip
def _reference_add(o: SimpleNamespace) -> None:
    """Add good images to the reference memory: re-exports the graphs (parity re-run); calibration must be redone."""
    from clipad.deploy.reference_add import add_reference
    from clipad.model.loading import resolve_device
    from clipad.runtime.serving import find_artifacts

    with progress_bars(not o.quiet) as tasks:  # add_reference takes the device by name, as str() names it
        art = add_reference(find_artifacts(o.artifacts), o.images, tasks, str(resolve_device(o.device)))
    for line in art.warnings():
        _say(line)
    typer.echo(art.describe_reference())


@_command(
    (ARTIFACTS, _o("--good", None, "Good images of the part: folder, file or glob.", str)),
    (_o("--anomalous", None, "Labelled anomalous images: F1-optimal threshold.", str), QUIET),
    _o("--masks", None, "Masks of the anomalous images (same relative path; name or name_mask).", Path),
    _o("--target-fpr", 0.01, "False-positive rate on good images (good images only)."),
    _panel(
        "INT8",
        _o("--int8", False, "Also write an INT8 model: the ONNX Runtime graph (QDQ) or NNCF's INT8 IR."),
        _o("--int8-backend", "onnxruntime", "onnxruntime (QDQ graph) or openvino (IR).", metavar=metavar(Int8Backend)),
        _o("--images", None, "INT8 calibration images (default: --good).", str, name="int8_images"),
        _o("--int8-max-images", 64, "At most this many INT8 calibration images.", min=1),
        _o("--min-agreement", 0.9, "Keep the INT8 graph at this top-1% agreement or more (without --gate-data)."),
    ),
    (GATE, _panel("Serving", SERVING, but=("artifacts", "openvino_mode")), TRITON),
)
def _calibrate(o: SimpleNamespace) -> None:
    """Fix per-category score constants and thresholds from calibration images (and optionally an INT8 graph)."""
    from clipad.calibration.calibrate import CalibrateConfig
    from clipad.runtime.calibrating import calibrate_artifacts
    from clipad.runtime.serving import find_artifacts

    (cfg := CalibrateConfig(**_fields(o, CalibrateConfig))).check()
    triton, art_dir = _triton(o, o.backend), find_artifacts(o.artifacts)
    served = functools.partial(_served, o, art_dir, triton, need_calibration=False)  # its notes: not calibration's
    with progress_bars(not o.quiet) as tasks:
        for line in calibrate_artifacts(cfg, art_dir, served, tasks, _say):
            typer.echo(line)


@_command(
    ARTIFACTS,
    _o("--backends", "torch,onnxruntime,tensorrt", "Comma-separated: torch, onnxruntime, tensorrt, openvino, triton."),
    _o("--precision", "fp32,fp16,int8", "Comma-separated: fp32, fp16, int8, bf16 (openvino).", name="precisions"),
    _o("--batch", None, "Comma-separated batch sizes (default: 1 and the max batch).", str, name="batches"),
    _o("--attention", "fused", "Torch rows: fused (SDPA), explicit (MatMul + Softmax).", name="attentions"),
    (_o("--iterations", 20, "Timed calls."), _o("--warmup", 3, "Untimed calls before them."), DEVICE),
    (_o("--no-parity", False, "No parity figures."), _o("--json", None, "Every figure as JSON.", Path, writes="file")),
    (_o("--plot", None, "Latency and throughput against batch size (PNG).", Path, writes="file"), QUIET),
    TRITON,
)
def _bench(o: SimpleNamespace) -> None:
    """Latency, throughput, memory, start-up and parity per backend, precision and batch; FLOP floor."""
    from clipad.deploy.artifacts import load_artifacts
    from clipad.runtime.bench import BenchConfig, run_bench
    from clipad.runtime.serving import find_artifacts

    cfg = BenchConfig.parse(**_fields(o, BenchConfig), parity=not o.no_parity)
    cfg.triton = _triton(o, "triton" if "triton" in cfg.backends else "")
    cfg.validate()
    art = load_artifacts(find_artifacts(o.artifacts))
    with progress_bars(not o.quiet) as tasks:
        report = run_bench(art, cfg, tasks)
    typer.echo(report.describe())
    for line in report.write(o.json, o.plot):
        _say(line)


@_command(
    _o("--repo", help="Triton model repository (from `clipad export --triton-repo`).", kind=Path),
    (_o("--http-port", 0, "On 127.0.0.1 (0: a free one)."), _o("--grpc-port", 0, "On 127.0.0.1 (0: a free one).")),
    (_o("--metrics-port", 0, "On 127.0.0.1 (0: free)."), _o("--log", None, "Server log (temp).", Path, writes="file")),
    _o("--models", None, "Comma-separated models to load (default: every one this build can load).", str),
)
def _triton_server(o: SimpleNamespace) -> None:
    """Run a local Triton server on loopback (pytriton's binary) until Ctrl-C: for development and tests."""
    from clipad.deploy.triton_server import LocalTriton, Ports, free_port, serve_until_stopped

    ports = Ports(o.http_port or free_port(), o.grpc_port or free_port(), o.metrics_port or free_port())
    names = comma_list(o.models, "--models") if o.models else None
    serve_until_stopped(LocalTriton(o.repo, names, ports, log_path=o.log), _say)


@_command(
    _o("--out", Path("clipad-demo"), "Folder for everything the demo writes.", writes="folder"),
    _o("--model", "clipad-tiny", "clipad-tiny (seconds) or ViT-B-16-plus-240 (minutes)."),
    (_o("--frames", 40, "Frames in the demo video.", min=1), QUIET),
)
def _demo(o: SimpleNamespace) -> None:
    """Offline end-to-end run: a synthetic part, 8 good images baked in, stream, predict, picture, report."""
    from clipad.runtime.demo import describe_demo, run_demo

    with progress_bars(not o.quiet) as tasks:
        typer.echo(describe_demo(run_demo(o.out, o.model, o.frames, tasks, log=_say), o.out))


@_command(
    *DATASET,
    _o("--out", help="Heads file (.safetensors); checkpoint, log, feature cache beside it.", kind=Path, writes="file"),
    (CATEGORIES, _o("--epochs", 5, min=1), _o("--batch-size", 8, min=1), _o("--lr", 1e-4)),
    (_o("--train-seed", 42, "Seed of the heads' initialisation."), RVS),
    _o("--resume", None, "Checkpoint (<out>.ckpt.pt) to continue from.", Path),
    _o("--cache-dtype", "float16", "Feature cache: float16 (half the disk) or float32.", metavar=metavar(CacheDtype)),
    _panel(
        "Validation",
        _o("--val-dataset", None, "Held-out validation set's layout (mvtec, visa, folder): selects the epoch.", str),
        (_o("--val-root", None, "Its root.", Path), _o("--val-categories", None, "Comma-separated categories.", str)),
    ),
    (*WEIGHTS, DEVICE, QUIET),
)
def _train(o: SimpleNamespace) -> None:
    """Train the four SDP+ heads offline (CLIP frozen; backbone features cached once)."""
    from clipad.training.run import TrainRun

    _finish(o, TrainRun(weight_spec=_weights(o), **_fields(o, TrainRun)).prepare())


@_command(
    _o("--require", None, "Exit 1 unless usable: torch, onnxruntime, openvino, tensorrt, triton, cuda.", list[str]),
    _o("--json", False, "Print the whole report as JSON (for support tickets)."),
    _o("--deep", False, "Also import torch (about 3 s) to see whether it imports and finds the GPU."),
)
def _doctor(o: SimpleNamespace) -> None:
    """What this machine gives clipad: backends it will use, and why not the others."""
    from clipad.runtime.doctor.report import run_doctor

    wanted = tuple(r.strip() for item in o.require or [] for r in item.split(",") if r.strip())
    report = run_doctor(o.deep, wanted)
    typer.echo(report.describe(as_json=o.json))
    report.refuse_unmet(wanted)


def run(argv: list[str]) -> int:
    """Run the CLI on ``argv`` and return the exit code (errors as one line on stderr, unless --debug)."""
    _state["debug"] = "--debug" in argv[:1]
    try:  # usage errors come back as exceptions (not Typer's box): one line, as every other error
        empty_values(argv)  # no option takes "" (a Path would read it as the current folder)
        code = app(args=argv, prog_name="clipad", standalone_mode=False)  # typer.Exit's code, else None
        return code if isinstance(code, int) else 0
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except (KeyboardInterrupt, typer.Abort):
        _say("interrupted")
        return 130
    except Exception as err:  # the user's mistake (usage errors have an exit_code), a missing extra, a failure
        if _state["debug"] and not hasattr(err, "exit_code"):
            raise
        _say(line) if (line := describe_failure(err)) else None  # none when the usage error printed the help
        return getattr(err, "exit_code", 1)


def main() -> None:
    sys.exit(run(sys.argv[1:]))
