"""`clipad`: thin Typer commands over the clipad packages.

Errors that the user can act on are printed as one line with a non-zero exit; a traceback
only with ``clipad --debug ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
import typer.core

from clipad.core.choices import (
    CacheDtype,
    Dataset,
    DeviceChoice,
    Int8Backend,
    Method,
    OpenVinoMode,
    RvsMethod,
    RvsProfile,
    metavar,
)
from clipad.methods.registry import METHODS, get_method

if TYPE_CHECKING:
    from clipad.deploy.manifest import Manifest, ParityFigures
    from clipad.methods.base import Method as DetectionMethod


def _options_given(ctx: typer.Context, except_for: set[str]) -> list[str]:
    """The options of the running command that were given on the command line, other than
    ``except_for`` (parameter names), as the user spelled them (``--sigma``)."""
    given = []
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name) if p.name else None
        if p.name not in except_for and getattr(source, "name", None) == "COMMANDLINE":
            given.append(p.opts[0])
    return given


# `clipad --help` lists the commands in the order of the work, not of this file.
WORKFLOW = (
    "demo",
    "doctor",
    "synth",
    "eval",
    "train",
    "export",
    "reference",
    "parity",
    "calibrate",
    "predict",
    "run",
    "bench",
    "triton-server",
)


class _WorkflowGroup(typer.core.TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: WORKFLOW.index(n) if n in WORKFLOW else len(WORKFLOW))


app = typer.Typer(
    name="clipad",
    cls=_WorkflowGroup,
    help="Zero-shot industrial anomaly detection with CLIP-AD: reference, evaluation, export and runtime.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
_state = {"debug": False}


# Weight options, shared by every command that loads a model.
ModelOpt = Annotated[str, typer.Option("--model", help="open_clip architecture (clipad-tiny: the small test config).")]
PretrainedOpt = Annotated[
    str, typer.Option("--pretrained", help="open_clip pretrained tag; downloaded once, then cached.")
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights", help="Offline open_clip state dict (.safetensors, or a torch file read with weights_only=True)."
    ),
]
RandomOpt = Annotated[
    bool, typer.Option("--random-weights", help="Seeded random weights (smoke tests; heatmaps are meaningless).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for --random-weights.")]
CacheOpt = Annotated[Path | None, typer.Option("--cache-dir", help="Where open_clip caches downloaded weights.")]
DeviceOpt = Annotated[str, typer.Option("--device", metavar="[auto|cpu|cuda|cuda:N]", help="Where the model runs.")]
# Method options, shared by eval and export (clipad.methods: one module per method).
MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        metavar=metavar(Method),
        help="; ".join(f"{m.name}: {m.summary}" for m in METHODS.values()) + ".",
    ),
]
ModeAliasOpt = Annotated[str | None, typer.Option("--mode", hidden=True, help="The old name of --method.")]
HeadsOpt = Annotated[
    Path | None, typer.Option("--heads", help="SDP+ heads (.safetensors, or the official .pth layout).")
]
RvsOpt = Annotated[str, typer.Option("--rvs", metavar=metavar(RvsMethod), help="Representative vector method.")]
PromptsOpt = Annotated[
    str, typer.Option("--prompts", help="Prompt set (industrial, hemorrhage, tumor, polyp) or a YAML/JSON file.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]


def _method(method: str, mode: str | None) -> DetectionMethod:
    """The registered method of --method, or of its old name --mode (a hidden alias); one line
    when both are given and differ."""
    from clipad.core.errors import ClipadError

    if mode is None:
        return get_method(method)
    if method not in ("sdp", mode):  # "sdp": --method's default
        raise ClipadError(f"--mode is the old name of --method: give one of them, not --method {method} --mode {mode}")
    return get_method(mode, "--mode")


def _weight_spec(
    model: str, pretrained: str, weights: Path | None, random_weights: bool, seed: int, cache_dir: Path | None
):
    from clipad.model.loading import WeightSpec

    return WeightSpec(
        model=model,
        pretrained=pretrained,
        weights=weights,
        random_weights=random_weights,
        seed=seed,
        cache_dir=cache_dir,
    )


def _parity_figures(manifest: Manifest, precision: str) -> ParityFigures:
    """The export parity figures of a precision that ``manifest`` lists."""
    figures = manifest.parity.figures(precision)
    assert figures is not None  # the manifest's validation: figures for every precision it lists
    return figures


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and third-party warnings.")] = False,
) -> None:
    _state["debug"] = debug
    if not debug:
        _quiet_third_party()


def _quiet_third_party() -> None:
    """Keep OpenCV's capture warnings and huggingface_hub's retry messages out of the user's way:
    clipad reports what went wrong in its own one line (``--debug`` shows them all)."""
    import logging
    import os

    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")  # read when cv2 is first imported
    if "cv2" in sys.modules:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    logging.getLogger("torch.utils.cpp_extension").setLevel(
        logging.ERROR
    )  # "No CUDA runtime is found" when NNCF imports it


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", help="Output folder (MVTec AD layout).")] = Path("synth"),
    n_train: Annotated[int, typer.Option(help="Good training images per category.")] = 4,
    n_good: Annotated[int, typer.Option(help="Good test images per category.")] = 6,
    n_defect: Annotated[int, typer.Option(help="Test images per defect type and category.")] = 4,
    width: Annotated[int, typer.Option(help="Image width in pixels.")] = 160,
    height: Annotated[int, typer.Option(help="Image height in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Random seed; the same arguments give identical files.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    defect_scale: Annotated[
        float, typer.Option("--defect-scale", min=0.2, help="Enlarge the pasted defects (1 = default sizes).")
    ] = 1.0,
) -> None:
    """Write a small deterministic synthetic dataset (textures and objects with pasted defects and exact masks)."""
    from clipad.data.synth import make_synthetic

    counts = make_synthetic(out, n_train, n_good, n_defect, width, height, seed, force, defect_scale)
    total = sum(counts.values())
    typer.echo(f"wrote {total} test images in {len(counts)} categories ({', '.join(counts)}) to {out}")


# help= rather than a docstring (also for bench and triton-server): Typer keeps a wrapped docstring's line breaks
# in the command list of `clipad --help`, and this summary is longer than a line.
@app.command(
    "eval",
    help=(
        "Evaluate SDP/SDP+ (or, with --shots, the normal-reference mode) on a dataset's test split; writes "
        "results.json and prints a Table-1 style table."
    ),
)
def eval_(
    dataset: Annotated[str, typer.Option("--dataset", metavar=metavar(Dataset), help="Dataset layout.")],
    root: Annotated[Path, typer.Option("--root", help="Dataset root folder.")],
    categories: Annotated[
        str | None, typer.Option("--categories", help="Comma-separated categories (default: all).")
    ] = None,
    method: MethodOpt = "sdp",
    mode: ModeAliasOpt = None,
    heads: HeadsOpt = None,
    rvs: RvsOpt = "dbscan",
    prompts: PromptsOpt = "industrial",
    sigma: Annotated[
        float | None, typer.Option("--sigma", help="Gaussian smoothing sigma (default 8; 2 for SDP+ on VisA).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    out: Annotated[Path, typer.Option("--out", help="results.json path.")] = Path("results.json"),
    shots: Annotated[
        int | None,
        typer.Option(
            "--shots",
            help=(
                "Normal-reference mode: K good training images per category and seed baked into the model "
                "(MVTec layout)."
            ),
        ),
    ] = None,
    shot_seeds: Annotated[
        str, typer.Option("--shot-seeds", help="With --shots: comma-separated seeds; mean and spread over them.")
    ] = "0",
    memory_patches: Annotated[
        int, typer.Option("--memory-patches", help="With --shots: at most N memory patches per stage.")
    ] = 1024,
    model: ModelOpt = "ViT-B-16-plus-240",
    pretrained: PretrainedOpt = "laion400m_e31",
    weights: WeightsOpt = None,
    random_weights: RandomOpt = False,
    seed: SeedOpt = 0,
    cache_dir: CacheOpt = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    from clipad.core.choices import parse_choice
    from clipad.core.progress import progress_bars
    from clipad.data import check_masks, load_split
    from clipad.evaluation.evaluate import EvalConfig, evaluate, format_table, write_results
    from clipad.model.heads import load_heads
    from clipad.model.loading import resolve_device
    from clipad.model.prompts import load_prompt_set

    chosen = _method(method, mode)
    chosen.check_options(heads is not None, shots is not None, "--shots K (good training images per category)")
    parse_choice(RvsMethod, rvs, "--rvs")
    seeds = _csv(shot_seeds, "--shot-seeds", int)
    prompt_set = load_prompt_set(prompts)
    cats = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    split = load_split(dataset, root, cats)
    check_masks(split)
    loaded = chosen.load(
        _weight_spec(model, pretrained, weights, random_weights, seed, cache_dir), resolve_device(device)
    )
    visual: Any = loaded.clip.visual  # open_clip's VisionTransformer (no type stubs)
    width, embed_dim = visual.conv1.out_channels, visual.proj.shape[1]
    # check_options: heads are given exactly when the method takes them
    head_weights = load_heads(heads, width, embed_dim) if heads is not None else None
    cfg = EvalConfig(
        dataset=dataset,
        method=chosen.name,
        heads=head_weights,
        rvs=rvs,
        prompts=prompt_set,
        sigma=sigma,
        batch_size=batch_size,
    )
    n = sum(len(v) for v in split.values())
    typer.echo(
        f"evaluating {chosen.label(shots)} on {n} images in {len(split)} categories with {model} "
        f"({loaded.spec.describe()}), "
        f"sigma {cfg.effective_sigma():g}",
        err=True,
    )
    if random_weights:
        typer.echo("note: random weights give meaningless heatmaps; use them for smoke tests only", err=True)
    with progress_bars(enabled=not quiet) as tasks:
        if shots is None:
            results = evaluate(loaded, split, cfg, tasks)
        else:
            from clipad.evaluation.shots import evaluate_shots

            results = evaluate_shots(loaded, split, cfg, root, shots, seeds, tasks, memory_patches)
    write_results(results, out)
    typer.echo(format_table(results))
    if shots is not None:
        from clipad.evaluation.shots import format_spread

        typer.echo(format_spread(results))
    for cat, entry in results.items():
        for note in entry.get("rvs", {}).get("notes", []) + entry.get("notes", []):
            typer.echo(f"note: {cat}: {note}", err=True)
    skipped = results["mean"]["n_skipped"]
    if skipped:
        typer.echo(f"skipped {skipped} unreadable images (listed in {out})", err=True)
    typer.echo(f"results written to {out}", err=True)


@app.command()
def export(
    ctx: typer.Context,
    category: Annotated[str, typer.Option("--category", help="Category name (names the artifacts and Triton models).")],
    object_name: Annotated[
        str | None,
        typer.Option("--object-name", help="Object name in the prompts (default: the category, verbatim)."),
    ] = None,
    method: MethodOpt = "sdp",
    mode: ModeAliasOpt = None,
    heads: HeadsOpt = None,
    rvs: RvsOpt = "dbscan",
    rvs_profile: Annotated[
        str,
        typer.Option(
            "--rvs-profile",
            metavar=metavar(RvsProfile),
            help="DBSCAN parameters: mvtec (eps 0.5, 15) or visa (eps 1.5, 25).",
        ),
    ] = "mvtec",
    prompts: PromptsOpt = "industrial",
    sigma: Annotated[float, typer.Option("--sigma", help="Gaussian smoothing sigma of the map.")] = 8.0,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch the artifacts serve.")] = 8,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            metavar="[fp32|fp16|all|int8]",
            help=(
                "fp32; fp16 (FP32 and mixed FP16 graphs, the export fails when the FP16 graph misses its parity "
                "limits); all (the same, an FP16 graph outside its limits is dropped with a warning); int8 with "
                "--engine builds the engine from the calibrated INT8 graph in --out."
            ),
        ),
    ] = "all",
    engine: Annotated[
        bool, typer.Option("--engine", help="Also build a TensorRT engine (needs TensorRT and a GPU).")
    ] = False,
    opt_batch: Annotated[
        int | None,
        typer.Option(
            "--opt-batch",
            help=(
                "With --engine: the batch size TensorRT tunes the engine's kernels for (default: min(8, max batch)); "
                "the engine serves batch 1 to the max batch."
            ),
        ),
    ] = None,
    triton_repo: Annotated[
        Path | None, typer.Option("--triton-repo", help="Also write a Triton model repository here.")
    ] = None,
    reference: Annotated[
        str | None,
        typer.Option(
            "--reference",
            help=(
                "Good images of the part (folder, file or glob): their patch tokens are baked into the graph (fused "
                "with zero-shot; --method reference: alone)."
            ),
        ),
    ] = None,
    shots: Annotated[
        int | None, typer.Option("--shots", help="With --reference: use the first K images (sorted; default all).")
    ] = None,
    memory_patches: Annotated[
        int,
        typer.Option(
            "--memory-patches", help="With --reference: at most N memory patches per stage (k-center coreset beyond)."
        ),
    ] = 1024,
    openvino: Annotated[
        bool,
        typer.Option(
            "--openvino",
            help=(
                "Also write the OpenVINO IR (FP32 weights, FP32 islands marked) and NNCF's INT8 IR, parity-checked "
                "(needs clipad\\[openvino])."  # \\[: Rich markup would take [openvino] for a style
            ),
        ),
    ] = False,
    gate_data: Annotated[
        Path | None,
        typer.Option(
            "--gate-data",
            help=(
                "Labelled held-out images (MVTec layout, e.g. `clipad synth`; a few hundred) of this category: each "
                "reduced precision's (the FP16 graph; with --openvino bf16 and int8) pixel and image AUROC drop "
                "against FP32 is gated and recorded in the manifest; the FP16 graph is kept only when its gate passes."
            ),
        ),
    ] = None,
    max_auroc_drop: Annotated[
        float, typer.Option("--max-auroc-drop", help="The quality gate's limit in AUROC points.")
    ] = 0.5,
    out: Annotated[
        Path | None, typer.Option("--out", help="Artifact directory (default artifacts/<category>).")
    ] = None,
    model: ModelOpt = "ViT-B-16-plus-240",
    pretrained: PretrainedOpt = "laion400m_e31",
    weights: WeightsOpt = None,
    random_weights: RandomOpt = False,
    seed: SeedOpt = 0,
    cache_dir: CacheOpt = None,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
) -> None:
    """Export one category: RVS text vectors baked into an ONNX graph (FP32 and mixed FP16), parity-checked."""
    from clipad.core.choices import parse_choice
    from clipad.core.errors import ClipadError
    from clipad.core.progress import progress_bars
    from clipad.deploy.artifacts import made_by_calibrate
    from clipad.deploy.export import ExportConfig, ExportPrecision, validate
    from clipad.deploy.export import export as run_export
    from clipad.deploy.manifest import ONNX_INT8, PLAN
    from clipad.model.loading import resolve_device
    from clipad.model.prompts import load_prompt_set

    if opt_batch is not None and not engine:
        raise ClipadError("--opt-batch sets the TensorRT engine's optimisation profile: add --engine")
    if precision == "int8":
        unused = _options_given(ctx, except_for={"category", "out", "precision", "engine", "opt_batch", "quiet"})
        if unused:
            raise ClipadError(
                f"--precision int8 --engine builds the engine from the calibrated {ONNX_INT8} in --out and exports "
                f"nothing else; {', '.join(unused)} would be ignored: leave {'it' if len(unused) == 1 else 'them'} out"
            )
        from clipad.deploy.tensorrt.build import int8_engine

        if not engine:
            raise ClipadError(
                f"--precision int8 builds a TensorRT engine from {ONNX_INT8}: add --engine "
                f"(ONNX Runtime runs {ONNX_INT8} as it is: --backend onnxruntime)"
            )
        target = out or Path("artifacts") / category
        meta = int8_engine(target, opt_batch=opt_batch)
        typer.echo(
            f"INT8 engine written to {target / PLAN} (TensorRT {meta.tensorrt}, {meta.gpu}, {meta.build_s} s, "
            f"batch {meta.profile.min}..{meta.profile.max} tuned for {meta.profile.opt})"
        )
        return
    chosen = _method(method, mode)
    chosen.check_options(heads is not None, reference is not None, "--reference GOOD_IMAGES")
    parse_choice(RvsMethod, rvs, "--rvs")
    from clipad.deploy.reference_set import ReferenceConfig

    if reference is None and shots is not None:
        raise ClipadError("--shots needs --reference GOOD_IMAGES")
    cfg = ExportConfig(
        category=category,
        out=out or Path("artifacts") / category,
        object_name=object_name,
        method=chosen.name,
        heads_path=heads,
        rvs=cast(RvsMethod, rvs),  # checked by parse_choice above
        rvs_profile=rvs_profile,
        prompts_source=prompts,
        sigma=sigma,
        max_batch=max_batch,
        precision=cast(ExportPrecision, precision),  # checked by validate below
        engine=engine,
        opt_batch=opt_batch,
        triton_repo=triton_repo,
        openvino=openvino,
        gate_root=gate_data,
        max_auroc_drop=max_auroc_drop,
        reference=ReferenceConfig(reference, shots, memory_patches) if reference is not None else None,
    )
    validate(cfg)
    previous = " and ".join(made_by_calibrate(cfg.out))
    cfg.prompts = load_prompt_set(prompts)
    loaded = chosen.load(
        _weight_spec(model, pretrained, weights, random_weights, seed, cache_dir), resolve_device(device)
    )
    if random_weights:
        typer.echo("note: random weights give meaningless heatmaps; use them for smoke tests only", err=True)
    with progress_bars(enabled=not quiet) as tasks:
        art = run_export(loaded, cfg, tasks)
    for warning in art.manifest.warnings:
        typer.echo(f"WARNING: {warning}", err=True)
    for p in art.manifest.precisions:
        f = _parity_figures(art.manifest, p)
        typer.echo(
            f"parity {p} (vs {f.against}): rel L2 {f.rel_l2:.1e}, image_prob err {f.prob_max_abs:.1e}, "
            f"top-1% agreement {f.top1pct_agreement:.3f}"
        )
    ov = art.manifest.openvino
    for ov_p, ov_f in ov.parity.items() if ov else ():
        typer.echo(
            f"parity openvino {ov_p} (vs {ov_f.against}): rel L2 {ov_f.rel_l2:.1e}, "
            f"image_prob err {ov_f.prob_max_abs:.1e}, top-1% agreement {ov_f.top1pct_agreement:.3f}"
        )
    from clipad.deploy.quality_gate import describe_gate

    for p, g in (art.manifest.parity.gates or {}).items():
        typer.echo(describe_gate(f"onnxruntime {p}", g))
    for ov_p, g in (ov.gates or {}).items() if ov else ():
        typer.echo(describe_gate(f"openvino {ov_p}", g))
    typer.echo(f"artifacts written to {art.root}")
    if previous:
        typer.echo(
            f"note: the earlier artifacts here had {previous}; a new export starts uncalibrated: "
            f"run `clipad calibrate --artifacts {art.root}` again",
            err=True,
        )
    if triton_repo is not None:
        typer.echo(f"Triton model repository written to {triton_repo}")


@app.command()
def parity(
    artifacts: Annotated[Path, typer.Option("--artifacts", help="Artifact directory from `clipad export`.")],
    backends: Annotated[
        str,
        typer.Option(
            "--backends", help="Comma-separated: onnxruntime, tensorrt, openvino, torch, triton (with --url)."
        ),
    ] = "onnxruntime",
    images: Annotated[
        Path | None,
        typer.Option("--images", help="Folder of images to compare on (default: built-in synthetic inputs)."),
    ] = None,
    device: DeviceOpt = "cpu",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the rows as JSON.")] = None,
    url: UrlOpt = None,
    triton_model: TritonModelOpt = None,
    triton_version: TritonVersionOpt = "",
    triton_timeout: TritonTimeoutOpt = 10.0,
    triton_shm: TritonShmOpt = False,
) -> None:
    """Compare the exported backends with the FP32 PyTorch reference (on the CPU) and print a table."""
    import json

    from clipad.core.atomic import write_text_atomic
    from clipad.data.images import read_model_images
    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.parity import parity_images
    from clipad.runtime.parity import format_rows, run_parity

    names = [b.strip() for b in backends.split(",") if b.strip()]
    triton = _triton(
        "triton" if "triton" in names else "", url, triton_model, triton_version, triton_timeout, 1, triton_shm
    )
    art = load_artifacts(artifacts)
    x = read_model_images(images, art.image_size, 8) if images else parity_images(art.image_size, 3)
    rows = run_parity(art, names, x, device, triton)
    typer.echo(format_rows(rows))
    if json_out is not None:
        write_text_atomic(json_out, json.dumps([r.to_json() for r in rows], indent=2) + "\n")
    if any(r.within_tolerance is False for r in rows):  # None: no limit defined for that precision
        raise typer.Exit(1)


def _say(line: str) -> None:
    typer.echo(line, err=True)


BackendOpt = Annotated[
    str,
    typer.Option(
        "--backend",
        metavar="[auto|tensorrt|onnxruntime|torch|openvino|triton]",
        help=(
            "auto (fastest available; never openvino or triton), tensorrt, onnxruntime, torch, openvino (--device "
            "cpu/auto -> CPU, gpu -> GPU, or OpenVINO's CPU, GPU, GPU.N, AUTO), or triton (a Triton server at --url)."
        ),
    ),
]
# The Triton backend's options. The model option is --triton-model, not --model: elsewhere --model
# names the open_clip architecture, and one name should not mean two things.
UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="With --backend triton: the server, grpc://HOST:8001 or http://HOST:8000."),
]
TritonModelOpt = Annotated[
    str | None,
    typer.Option(
        "--triton-model",
        help=(
            "With --backend triton: the Triton model name (default <category>_python, written by `clipad export "
            "--triton-repo`; <category>_onnx or _trt on a GPU Triton). Not --model, which names the open_clip "
            "architecture elsewhere."
        ),
    ),
]
TritonVersionOpt = Annotated[
    str,
    typer.Option(
        "--triton-version", help="With --backend triton: model version (default: the server's version policy)."
    ),
]
TritonTimeoutOpt = Annotated[
    float, typer.Option("--triton-timeout", help="With --backend triton: seconds per request.")
]
TritonInflightOpt = Annotated[
    int,
    typer.Option(
        "--triton-inflight",
        min=1,
        help=(
            "With --backend triton: requests in flight per client: each batch is split into this many requests, which "
            "the server batches again with those of other clients."
        ),
    ),
]
TritonShmOpt = Annotated[
    bool,
    typer.Option(
        "--triton-shm", help="With --backend triton: system shared memory for tensors (client and server on one host)."
    ),
]


def _triton(backend: str, url: str | None, model: str | None, version: str, timeout: float, inflight: int, shm: bool):
    """The Triton target of ``--backend triton`` (None otherwise); one line for options without it."""
    from clipad.core.errors import ClipadError

    if backend != "triton":
        if url is not None or model is not None:
            raise ClipadError("--url and --triton-model go with --backend triton")
        return None
    from clipad.runtime.backends.triton_backend import TritonTarget

    if url is None:
        raise ClipadError("--backend triton needs --url grpc://HOST:PORT or http://HOST:PORT")
    target = TritonTarget(url, model, version, timeout, inflight, shm)
    target.check()
    return target


ServePrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        metavar="[auto|fp32|fp16|bf16|int8]",
        help=(
            "auto (fp16 on a GPU provider, else fp32; openvino: int8 or bf16 where its quality gate passed, else "
            "fp32), fp32, fp16, bf16 (openvino) or int8 (model.int8.onnx; openvino: NNCF's INT8 IR)."
        ),
    ),
]
ArtifactsOpt = Annotated[
    Path | None, typer.Option("--artifacts", help="Artifact directory (default: the only one under ./artifacts).")
]
OvModeOpt = Annotated[
    str,
    typer.Option(
        "--openvino-mode",
        metavar=metavar(OpenVinoMode),
        help=(
            "OpenVINO performance hint: latency (one camera) or throughput (many: a batch's frames run as parallel "
            "requests)."
        ),
    ),
]


@app.command("run")
def run_(
    camera: Annotated[list[int] | None, typer.Option("--camera", help="Camera index (repeatable).")] = None,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="Video file, image folder or glob, rtsp/http URL (repeatable)."),
    ] = None,
    artifacts: ArtifactsOpt = None,
    backend: BackendOpt = "auto",
    precision: ServePrecisionOpt = "auto",
    device: DeviceOpt = "auto",
    openvino_mode: OvModeOpt = "latency",
    save: Annotated[Path | None, typer.Option("--save", help="Overlay video (.mp4 or .avi).")] = None,
    events: Annotated[
        Path | None, typer.Option("--events", help="JSON Lines, one object per processed frame (appended).")
    ] = None,
    events_max_mb: Annotated[
        float,
        typer.Option("--events-max-mb", help="Rotate the events file at this size (events.jsonl.1 ... .5); 0: never."),
    ] = 0.0,
    segment_minutes: Annotated[
        float,
        typer.Option(
            "--segment-minutes",
            help=(
                "Cut the --save video into files of this many minutes, so a hard stop loses at most the open one; 0: "
                "one file."
            ),
        ),
    ] = 0.0,
    snapshots: Annotated[
        Path | None,
        typer.Option("--snapshots", help="Folder for anomalous frames: original, overlay, raw map, mask."),
    ] = None,
    snapshot_interval: Annotated[
        float,
        typer.Option(
            "--snapshot-interval",
            help="At most one snapshot per source every this many seconds (0: every anomalous frame).",
        ),
    ] = 1.0,
    show: Annotated[
        bool, typer.Option("--show", help="OpenCV window with the overlay (needs a GUI OpenCV and a display).")
    ] = False,
    serve: Annotated[
        str | None, typer.Option("--serve", help="HOST:PORT of a live web viewer (e.g. 127.0.0.1:8080).")
    ] = None,
    max_frames: Annotated[int | None, typer.Option("--max-frames", min=1, help="Stop after this many frames.")] = None,
    status_every: Annotated[float, typer.Option("--status-every", help="Seconds between status lines.")] = 5.0,
    url: UrlOpt = None,
    triton_model: TritonModelOpt = None,
    triton_version: TritonVersionOpt = "",
    triton_timeout: TritonTimeoutOpt = 10.0,
    triton_inflight: TritonInflightOpt = 2,
    triton_shm: TritonShmOpt = False,
) -> None:
    """Stream frames from cameras, videos or folders through the exported model; emit heatmaps and records."""
    from clipad.runtime.run import RunConfig, run_stream
    from clipad.runtime.serving import open_served

    cfg = RunConfig(
        cameras=camera or [],
        sources=source or [],
        events=events,
        events_max_mb=events_max_mb,
        save=save,
        segment_minutes=segment_minutes,
        snapshots=snapshots,
        snapshot_interval=snapshot_interval,
        show=show,
        serve=serve,
        max_frames=max_frames,
        status_every=status_every,
    )
    cfg.check()  # before any model work
    triton = _triton(backend, url, triton_model, triton_version, triton_timeout, triton_inflight, triton_shm)
    served = open_served(artifacts, backend, device, precision, triton=triton, mode=openvino_mode)
    for note in served.notes:
        _say(note)
    run_stream(cfg, served, _say)


@app.command()
def predict(
    source: Annotated[str, typer.Argument(help="Image file, folder or glob.")],
    artifacts: ArtifactsOpt = None,
    backend: BackendOpt = "auto",
    precision: ServePrecisionOpt = "auto",
    device: DeviceOpt = "auto",
    openvino_mode: OvModeOpt = "latency",
    out: Annotated[Path, typer.Option("--out", help="Output folder for predictions.jsonl.")] = Path("predictions"),
    save_maps: Annotated[
        bool, typer.Option("--save-maps", help="Also write maps/<stem>.npy (float32, model resolution).")
    ] = False,
    save_overlays: Annotated[bool, typer.Option("--save-overlays", help="Also write overlays/<stem>.png.")] = False,
    quiet: QuietOpt = False,
    url: UrlOpt = None,
    triton_model: TritonModelOpt = None,
    triton_version: TritonVersionOpt = "",
    triton_timeout: TritonTimeoutOpt = 10.0,
    triton_inflight: TritonInflightOpt = 2,
    triton_shm: TritonShmOpt = False,
) -> None:
    """Score images: one record per image in OUT/predictions.jsonl."""
    from clipad.core.progress import progress_bars
    from clipad.runtime.predict import PREDICTIONS
    from clipad.runtime.predict import predict as run_predict
    from clipad.runtime.serving import open_served

    triton = _triton(backend, url, triton_model, triton_version, triton_timeout, triton_inflight, triton_shm)
    served = open_served(artifacts, backend, device, precision, triton=triton, mode=openvino_mode)
    for note in served.notes:
        _say(note)
    with progress_bars(enabled=not quiet) as tasks:
        res = run_predict(
            served.backend,
            source,
            out,
            served.artifacts.image_size,
            served.calibration,
            tasks,
            save_maps,
            save_overlays,
        )
    for e in res.skipped:
        _say(f"warning: {e}")
    skipped = f", {len(res.skipped)} unreadable skipped" if res.skipped else ""
    typer.echo(f"{res.images} predictions written to {out / PREDICTIONS}{skipped}")


reference_app = typer.Typer(
    help="The normal-reference memory of an export (good images baked into the graph).", no_args_is_help=True
)
app.add_typer(reference_app, name="reference")


@reference_app.command("add")
def reference_add(
    images: Annotated[str, typer.Argument(help="Good images to add: folder, file or glob.")],
    artifacts: ArtifactsOpt = None,
    device: DeviceOpt = "cpu",
    quiet: QuietOpt = False,
) -> None:
    """Add good images to the reference memory: re-exports the graphs (parity re-run); calibration must be redone."""
    from clipad.core.progress import progress_bars
    from clipad.deploy.reference_add import add_reference
    from clipad.model.loading import resolve_device
    from clipad.runtime.serving import find_artifacts

    with progress_bars(enabled=not quiet) as tasks:
        # add_reference takes the device by name; str() of the resolved one names the same device
        art = add_reference(find_artifacts(artifacts), images, tasks, str(resolve_device(device)))
    for warning in art.manifest.warnings:
        typer.echo(f"WARNING: {warning}", err=True)
    r = art.manifest.reference
    assert r is not None  # add_reference refuses artifacts without a reference memory
    typer.echo(
        f"reference memory of {art.root}: {len(r.images)} images, {r.patches_per_stage} patches per stage "
        f"(coverage radius <= {max(r.coreset_radius):.3g}); parity "
        + ", ".join(f"{p} rel L2 {_parity_figures(art.manifest, p).rel_l2:.1e}" for p in art.manifest.precisions)
        + "; a Triton repository made from the old graph must be written again (`clipad export --triton-repo`)"
    )


@app.command()
def calibrate(
    artifacts: ArtifactsOpt = None,
    good: Annotated[str | None, typer.Option("--good", help="Good images of the part: folder, file or glob.")] = None,
    anomalous: Annotated[
        str | None, typer.Option("--anomalous", help="Labelled anomalous images: the threshold becomes F1-optimal.")
    ] = None,
    masks: Annotated[
        Path | None,
        typer.Option("--masks", help="Masks of the anomalous images (same relative path; name or name_mask)."),
    ] = None,
    target_fpr: Annotated[
        float, typer.Option("--target-fpr", help="False-positive rate on good images (good images only).")
    ] = 0.01,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help=(
                "Also write an INT8 model from calibration images: the ONNX Runtime graph (static QDQ quantisation) "
                "or, with --int8-backend openvino, NNCF's INT8 IR."
            ),
        ),
    ] = False,
    int8_backend: Annotated[
        str,
        typer.Option(
            "--int8-backend",
            metavar=metavar(Int8Backend),
            help=(
                "With --int8: onnxruntime (the INT8 ONNX graph) or openvino (the INT8 IR, made from the export's "
                "OpenVINO IR)."
            ),
        ),
    ] = "onnxruntime",
    images: Annotated[str | None, typer.Option("--images", help="INT8 calibration images (default: --good).")] = None,
    int8_max_images: Annotated[
        int, typer.Option("--int8-max-images", min=1, help="At most this many INT8 calibration images.")
    ] = 64,
    min_agreement: Annotated[
        float,
        typer.Option(
            "--min-agreement",
            help="Keep the INT8 graph only at this top-1% agreement with FP32 or more (without --gate-data).",
        ),
    ] = 0.9,
    gate_data: Annotated[
        Path | None,
        typer.Option(
            "--gate-data",
            help=(
                "With --int8: labelled held-out images (MVTec layout) of this category; the INT8 graph is kept only "
                "when its pixel and image AUROC drop against FP32 is at most --max-auroc-drop points (instead of "
                "--min-agreement)."
            ),
        ),
    ] = None,
    max_auroc_drop: Annotated[
        float, typer.Option("--max-auroc-drop", help="The quality gate's limit in AUROC points.")
    ] = 0.5,
    backend: BackendOpt = "auto",
    precision: ServePrecisionOpt = "auto",
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
    url: UrlOpt = None,
    triton_model: TritonModelOpt = None,
    triton_version: TritonVersionOpt = "",
    triton_timeout: TritonTimeoutOpt = 10.0,
    triton_inflight: TritonInflightOpt = 2,
    triton_shm: TritonShmOpt = False,
) -> None:
    """Fix per-category score constants and thresholds from calibration images (and optionally an INT8 graph)."""
    from clipad.calibration.calibrate import CalibrateConfig
    from clipad.calibration.calibrate import calibrate as run_calibrate
    from clipad.calibration.int8 import check_int8_backend, make_int8
    from clipad.core.progress import progress_bars
    from clipad.data.images import read_model_images
    from clipad.deploy.artifacts import load_artifacts
    from clipad.deploy.manifest import MANIFEST, ONNX_INT8, OV_INT8_XML
    from clipad.runtime.serving import find_artifacts, open_served

    cfg = CalibrateConfig(
        good=good,
        anomalous=anomalous,
        masks=masks,
        target_fpr=target_fpr,
        int8=int8,
        int8_images=images,
        int8_max_images=int8_max_images,
        min_agreement=min_agreement,
        int8_backend=int8_backend,
        gate_data=gate_data,
        max_auroc_drop=max_auroc_drop,
    )
    cfg.check()
    triton = _triton(backend, url, triton_model, triton_version, triton_timeout, triton_inflight, triton_shm)
    art_dir = find_artifacts(artifacts)
    with progress_bars(enabled=not quiet) as tasks:
        if cfg.int8:
            art = load_artifacts(art_dir)
            check_int8_backend(art, cfg.int8_backend)
            # cfg.check(): --int8 comes with --images or --good, so int8_source names them
            imgs = read_model_images(cast(str, cfg.int8_source), art.image_size, cfg.int8_max_images)
            f, gate = make_int8(
                art, imgs, tasks, cfg.min_agreement, cfg.gate_data, cfg.max_auroc_drop, cfg.int8_backend
            )
            written = ONNX_INT8 if int8_backend == "onnxruntime" else OV_INT8_XML
            typer.echo(
                f"{written} written ({len(imgs)} calibration images): vs FP32 rel L2 {f.rel_l2:.2e}, "
                f"image_prob err {f.prob_max_abs:.2e}, top-1% agreement {f.top1pct_agreement:.3f}"
            )
            if gate is not None:
                from clipad.deploy.quality_gate import describe_gate

                typer.echo(describe_gate(f"{int8_backend} int8", gate))
        if cfg.good is not None:
            served = open_served(art_dir, backend, device, precision, need_calibration=False, triton=triton)
            for note in served.notes:  # without calibration notes: calibrate makes them
                _say(note)
            with served.backend:
                entry, warnings = run_calibrate(
                    served.artifacts, served.backend, cfg.good, tasks, cfg.anomalous, cfg.masks, cfg.target_fpr
                )
            for w in warnings:
                _say(f"warning: {w}")
            a, n = entry.achieved, entry.set
            extra = f", F1 {a['f1']:.3f}, recall {a['recall']:.3f}" if "f1" in a else ""
            typer.echo(
                f"calibrated on {n.good} good + {n.anomalous} anomalous images ({entry.method}): "
                f"threshold {entry.threshold:.4f} on the fused score, false-positive rate there {a['fpr']:.3f}{extra}; "
                f"pixel threshold {entry.pixel_threshold:.4g}; written to {art_dir / MANIFEST}"
            )


def _csv(value: str, what: str, cast=str) -> list:
    """'a,b' -> [cast(a), cast(b)]; a one-line error for a value that does not convert."""
    from clipad.core.errors import ClipadError

    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ClipadError(f"{what} takes comma-separated values, got '{value}'") from None


@app.command(
    help=(
        "Latency, throughput, memory, start-up and parity per backend, precision and batch; FLOP floor and dual-path "
        "cost."
    ),
)
def bench(
    artifacts: ArtifactsOpt = None,
    backends: Annotated[
        str,
        typer.Option(
            "--backends",
            help=(
                "Comma-separated: torch, onnxruntime, tensorrt, openvino, triton (with --url; unavailable ones are "
                "reported with the reason)."
            ),
        ),
    ] = "torch,onnxruntime,tensorrt",
    precision: Annotated[
        str, typer.Option("--precision", help="Comma-separated: fp32, fp16, int8, bf16 (openvino).")
    ] = "fp32,fp16,int8",
    batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1,8",
    attention: Annotated[
        str,
        typer.Option(
            "--attention",
            help=(
                "Torch rows, comma-separated: fused (scaled_dot_product_attention), explicit (MatMul + Softmax, as in "
                "the exported graph)."
            ),
        ),
    ] = "fused",
    iterations: Annotated[int, typer.Option("--iterations", help="Timed calls per row.")] = 20,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls before them.")] = 3,
    device: DeviceOpt = "auto",
    no_parity: Annotated[
        bool, typer.Option("--no-parity", help="Skip the parity figures against the PyTorch reference.")
    ] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every figure and sample as JSON.")] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Latency and throughput against batch size (PNG).")
    ] = None,
    quiet: QuietOpt = False,
    url: UrlOpt = None,
    triton_model: TritonModelOpt = None,
    triton_version: TritonVersionOpt = "",
    triton_timeout: TritonTimeoutOpt = 10.0,
    triton_inflight: TritonInflightOpt = 2,
    triton_shm: TritonShmOpt = False,
) -> None:
    from clipad.core.progress import progress_bars
    from clipad.deploy.artifacts import load_artifacts
    from clipad.runtime.bench import BenchConfig, format_markdown, run_bench, validate, write_json, write_plot
    from clipad.runtime.serving import find_artifacts

    cfg = BenchConfig(
        backends=_csv(backends, "--backends"),
        precisions=_csv(precision, "--precision"),
        batches=_csv(batch, "--batch", int),
        iterations=iterations,
        warmup=warmup,
        device=cast(DeviceChoice, device),  # validate() below parses it
        parity=not no_parity,
        attentions=_csv(attention, "--attention"),
    )
    cfg.triton = _triton(
        "triton" if "triton" in cfg.backends else "",
        url,
        triton_model,
        triton_version,
        triton_timeout,
        triton_inflight,
        triton_shm,
    )
    validate(cfg)
    art = load_artifacts(find_artifacts(artifacts))
    with progress_bars(enabled=not quiet) as tasks:
        res = run_bench(art, cfg, tasks)
    typer.echo(format_markdown(res))
    if json_out is not None:
        write_json(res, json_out)
        typer.echo(f"JSON written to {json_out}", err=True)
    if plot is not None:
        write_plot(res, plot)
        typer.echo(f"plot written to {plot}", err=True)


@app.command(
    "triton-server",
    help=(
        "Run a local Triton server on loopback (the nvidia-pytriton wheel's binary) until Ctrl-C: for development "
        "and tests."
    ),
)
def triton_server(
    repo: Annotated[Path, typer.Option("--repo", help="Triton model repository (from `clipad export --triton-repo`).")],
    http_port: Annotated[int, typer.Option("--http-port", help="HTTP port on 127.0.0.1 (0: a free one).")] = 0,
    grpc_port: Annotated[int, typer.Option("--grpc-port", help="gRPC port on 127.0.0.1 (0: a free one).")] = 0,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Metrics port on 127.0.0.1 (0: a free one).")] = 0,
    models: Annotated[
        str | None,
        typer.Option(
            "--models",
            help="Comma-separated models to load (default: every one this build can load: the _python ones).",
        ),
    ] = None,
    log: Annotated[Path | None, typer.Option("--log", help="Server log file (default: a temporary one).")] = None,
) -> None:
    from clipad.deploy.triton_server import LocalTriton, Ports, free_port, serve_until_stopped

    ports = Ports(http_port or free_port(), grpc_port or free_port(), metrics_port or free_port())
    names = _csv(models, "--models") if models else None
    serve_until_stopped(LocalTriton(repo, names, ports, log_path=log), _say)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder for everything the demo writes.")] = Path("clipad-demo"),
    model: Annotated[
        str, typer.Option("--model", help="clipad-tiny (seconds) or ViT-B-16-plus-240 (minutes).")
    ] = "clipad-tiny",
    frames: Annotated[int, typer.Option("--frames", min=1, help="Frames in the demo video.")] = 40,
    quiet: QuietOpt = False,
) -> None:
    """Offline end-to-end run: a synthetic part, 8 good images baked in, stream, predict, picture, report."""
    from clipad.core.progress import progress_bars
    from clipad.runtime.demo import run_demo

    typer.echo(
        "clipad demo: random weights, so only the normal-reference signal (8 good images baked into the graph) "
        "is meaningful; zero-shot text scores are not",
        err=True,
    )
    with progress_bars(enabled=not quiet) as tasks:
        report = run_demo(out, model, frames, tasks, log=lambda s: typer.echo(s, err=True))
    typer.echo(
        f"demo finished in {report['seconds']} s: image AUROC {report['image_auroc']:.3f}, pixel AUROC "
        f"{report['pixel_auroc']:.3f}; report {out / 'report.md'}, picture {report['picture']}, "
        f"overlay video {out / 'overlay.mp4'}"
    )


@app.command()
def train(
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset", metavar=metavar(Dataset), help="Dataset layout (its test split, as the official recipe)."
        ),
    ],
    root: Annotated[Path, typer.Option("--root", help="Dataset root folder.")],
    out: Annotated[
        Path, typer.Option("--out", help="Heads file (.safetensors); checkpoint, log and feature cache go beside it.")
    ],
    categories: Annotated[
        str | None, typer.Option("--categories", help="Comma-separated categories (default: all).")
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    lr: Annotated[float, typer.Option("--lr")] = 1e-4,
    train_seed: Annotated[int, typer.Option("--train-seed", help="Seed of the heads' initialisation.")] = 42,
    rvs: RvsOpt = "dbscan",
    resume: Annotated[
        Path | None, typer.Option("--resume", help="Checkpoint (<out>.ckpt.pt) to continue from.")
    ] = None,
    cache_dtype: Annotated[
        str,
        typer.Option(
            "--cache-dtype",
            metavar=metavar(CacheDtype),
            help="Feature cache precision: float16 (half the disk, same heads) or float32.",
        ),
    ] = "float16",
    val_dataset: Annotated[
        str | None,
        typer.Option(
            "--val-dataset", help="Held-out validation set's layout (mvtec, visa, folder): selects the epoch."
        ),
    ] = None,
    val_root: Annotated[Path | None, typer.Option("--val-root", help="Validation dataset root.")] = None,
    val_categories: Annotated[
        str | None, typer.Option("--val-categories", help="Comma-separated validation categories.")
    ] = None,
    model: ModelOpt = "ViT-B-16-plus-240",
    pretrained: PretrainedOpt = "laion400m_e31",
    weights: WeightsOpt = None,
    random_weights: RandomOpt = False,
    seed: SeedOpt = 0,
    cache_dir: CacheOpt = None,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Train the four SDP+ heads offline (CLIP frozen; backbone features cached once)."""
    from clipad.core.choices import CacheDtype, parse_choice
    from clipad.core.progress import progress_bars
    from clipad.data import check_masks, load_split
    from clipad.model.loading import load_model, resolve_device
    from clipad.training.train import TrainConfig
    from clipad.training.train import train as run_train

    parse_choice(RvsMethod, rvs, "--rvs")
    from clipad.core.errors import ClipadError

    parse_choice(CacheDtype, cache_dtype, "--cache-dtype")
    cats = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    split = load_split(dataset, root, cats)
    check_masks(split)
    val_split = None
    if (val_dataset is None) != (val_root is None):
        raise ClipadError("--val-dataset and --val-root go together")
    if val_dataset is not None and val_root is not None:  # both or neither, checked above
        vcats = [c.strip() for c in val_categories.split(",") if c.strip()] if val_categories else None
        val_split = load_split(val_dataset, val_root, vcats)
        check_masks(val_split)
    loaded = load_model(
        _weight_spec(model, pretrained, weights, random_weights, seed, cache_dir), resolve_device(device)
    )
    cfg = TrainConfig(
        out=out,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=train_seed,
        rvs=rvs,
        dataset=dataset,
        cache_dtype=cache_dtype,
    )
    with progress_bars(enabled=not quiet) as tasks:
        log = run_train(loaded, split, cfg, tasks, resume, val_split, val_dataset or "mvtec")
    last = log["epochs"][-1]
    chosen = (
        f", kept epoch {log['selected_epoch']} (best validation image AUROC)"
        if "selected_epoch" in log
        else ", kept the last epoch"
    )
    typer.echo(f"trained {len(log['epochs'])} epochs (last loss {last['loss']:.4f}){chosen}; heads written to {out}")


@app.command()
def doctor(
    require: Annotated[
        list[str] | None,
        typer.Option(
            "--require",
            help=(
                "Exit 1 unless this can be used here: torch, onnxruntime, openvino, tensorrt, triton or cuda "
                "(repeatable, or comma-separated)."
            ),
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole report as JSON (for support tickets).")
    ] = False,
    deep: Annotated[
        bool, typer.Option("--deep", help="Also import torch (about 3 s) to see whether it imports and finds the GPU.")
    ] = False,
) -> None:
    """What this machine gives clipad: backends it will use, and why not the others."""
    import json

    from clipad.core.errors import ClipadError
    from clipad.runtime.doctor.report import render_text, report_json, run_doctor, unmet

    wanted = tuple(r.strip() for item in (require or []) for r in item.split(",") if r.strip())
    report = run_doctor(deep, wanted)
    typer.echo(json.dumps(report_json(report), indent=2) if as_json else render_text(report))
    missing = unmet(report, wanted)
    if missing:
        raise ClipadError("; ".join(f"{v.check} cannot be used here: {v.detail}" for v in missing))


# The optional packages a command may need, and the install that brings each (pyproject's extras).
INSTALL_HINTS = {
    "onnxruntime": "pip install 'clipad[cpu]', or on an NVIDIA GPU workstation "
    "pip install --extra-index-url https://pypi.nvidia.com 'clipad[gpu]'",
    "openvino": "pip install 'clipad[openvino]'",
    "nncf": "pip install 'clipad[openvino]'",
}


def run(argv: list[str]) -> int:
    """Run the CLI on ``argv`` and return the exit code (errors as one line on stderr)."""
    from clipad.core.errors import ClipadError

    _state["debug"] = "--debug" in argv[:1]
    try:
        app(args=argv, prog_name="clipad")  # usage errors are reported by Typer itself
        return 0
    except SystemExit as err:
        return err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except ClipadError as err:
        if _state["debug"]:
            raise
        typer.echo(f"error: {err}", err=True)
        return 1
    except ModuleNotFoundError as err:
        if _state["debug"]:
            raise
        if err.name in INSTALL_HINTS:
            typer.echo(
                f"error: {err.name} is not installed: {INSTALL_HINTS[err.name]} "
                "(`clipad doctor` tells what this machine has)",
                err=True,
            )
        else:
            typer.echo(f"error: {type(err).__name__}: {err} (run `clipad --debug ...` for the traceback)", err=True)
        return 1
    except Exception as err:  # an unexpected failure: still one line unless --debug
        if _state["debug"]:
            raise
        typer.echo(f"error: {type(err).__name__}: {err} (run `clipad --debug ...` for the traceback)", err=True)
        return 1


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
