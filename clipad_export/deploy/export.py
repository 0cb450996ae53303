"""`clipad export`: one category's self-contained artifacts, with parity checked every time.

Steps (each shown in the progress display): the method's model and what it writes beside its
graph (``Source``): for the CLIP methods text vectors with RVS (computed once, baked in) and the
reference SDPModel (with ``--reference``, the good images' memory baked into it, method.md
section 14); for AnomalyDINO the DINOv2 model with its memory (``clipad.deploy.anomalydino_export``);
then the FP32 ONNX graph, optionally the mixed FP16 graph, parity of each
graph in ONNX Runtime against the reference on deterministic inputs at batch 1 and 3 (the
export fails when a tolerance is exceeded), optionally a TensorRT engine, then the manifest and
optionally a Triton model repository. Everything is written into staging directories
(``clipad.core.owned``) and renamed into place at the end, the Triton models right after the
artifacts they serve.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from clipad import __version__
from clipad.core.choices import Precision, RvsProfile, parse_choice
from clipad.core.errors import ClipadError
from clipad.core.hashing import file_sha256
from clipad.core.owned import resolve_out
from clipad.core.progress import Tasks
from clipad.core.values import AUROC_DROP, BATCH, SIGMA
from clipad.data.geometry import Geometry
from clipad.deploy.artifacts import Artifacts, artifact_lock, hash_files, staging_dir
from clipad.deploy.export_config import ExportConfig, ExportPrecision
from clipad.deploy.gate_step import Baseline, gate_step
from clipad.deploy.manifest import (
    CATEGORY_RE,
    FORMAT_VERSION,
    HEADS_FILE,
    MANIFEST,
    ONNX_FILES,
    ONNX_FP16,
    ONNX_FP32,
    REFERENCE_MEMORY,
    TEXT_FEATURES,
    FileWeights,
    Manifest,
    OpenClipWeights,
    ParityFigures,
    Prompts,
    QualityGate,
    RandomWeights,
    Rvs,
)
from clipad.deploy.parity import TOLERANCES, compare, parity_images
from clipad.deploy.quality_gate import GateSet
from clipad.deploy.runners.onnxruntime import OnnxRuntimeRunner
from clipad.deploy.source import Source
from clipad.methods.registry import get_method
from clipad.model.heads import Heads, load_heads, save_heads
from clipad.model.loading import LoadedModel
from clipad.model.prompts import PromptSet
from clipad.model.rvs import dbscan_params, n_sentences, text_vectors
from clipad.model.sdp import SDPModel

if TYPE_CHECKING:
    from torch import nn

    from clipad.deploy.triton_repo import StagedRepo
    from clipad.model.anomalydino import AnomalyDinoModel
    from clipad.model.dinov2 import DinoWeights


def validate(cfg: ExportConfig, loaded: LoadedModel | None = None) -> None:
    """Checks that are cheap, before any slow work; one line each."""
    if not CATEGORY_RE.match(cfg.category):
        raise ClipadError(
            f"--category '{cfg.category}' must be letters, digits, '_', '.' or '-' (it names files and Triton models)"
        )
    if cfg.object_name is not None and not cfg.object_name.strip():
        raise ClipadError("--object-name is empty")
    BATCH.parse(cfg.max_batch, "--max-batch")
    if cfg.opt_batch is not None:
        from clipad.deploy.tensorrt.plan import check_opt_batch

        check_opt_batch(cfg.opt_batch, cfg.max_batch)
    SIGMA.parse(cfg.sigma, "--sigma")
    AUROC_DROP.parse(cfg.max_auroc_drop, "--max-auroc-drop")
    parse_choice(RvsProfile, cfg.rvs_profile, "--rvs-profile")
    parse_choice(ExportPrecision, cfg.precision, "--precision")
    method = get_method(cfg.method)
    method.check_exported(cfg.engine, cfg.openvino, cfg.triton_repo is not None)
    method.check_options(cfg.heads_path is not None, cfg.reference is not None, "--reference GOOD_IMAGES")
    if cfg.dino is not None and method.backbone != "dinov2":
        raise ClipadError("--backbone, --resolution, --rotations, --masking: only for --method anomalydino")
    if cfg.reference is not None:
        cfg.reference.check()
    if cfg.heads_path is not None and not Path(cfg.heads_path).is_file():
        raise ClipadError(f"heads file not found: {cfg.heads_path}")
    if cfg.engine:
        from clipad.deploy.tensorrt.plan import require_tensorrt

        require_tensorrt()
    if cfg.triton_repo is not None:
        from clipad.deploy.triton_repo import check_triton_repo, require_model_config

        require_model_config()
        check_triton_repo(Path(cfg.triton_repo), cfg.category)
    if cfg.openvino:
        from clipad.deploy.openvino_ir import require_openvino

        require_openvino()
    if cfg.gate_root is not None and not cfg.openvino and "fp16" not in cfg.precisions:
        raise ClipadError(
            "--gate-data judges reduced precisions: export an FP16 graph (--precision fp16 or all) or add --openvino"
        )
    if cfg.max_auroc_drop < 0:
        raise ClipadError(f"--max-auroc-drop must be >= 0 AUROC points, not {cfg.max_auroc_drop}")
    if cfg.gate_root is not None and not Path(cfg.gate_root, cfg.category).is_dir():
        raise ClipadError(f"--gate-data {cfg.gate_root} has no folder for category '{cfg.category}'")
    parent = Path(cfg.out).resolve().parent
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not _writable(probe):
        raise ClipadError(f"cannot write to {parent} (--out {cfg.out})")
    if loaded is not None and cfg.prompts is not None:
        _check_prompt_length(loaded, cfg)


def _writable(path: Path) -> bool:
    import os

    return os.access(path, os.W_OK | os.X_OK)


def _check_prompt_length(loaded: LoadedModel, cfg: ExportConfig) -> None:
    """The tokenizer silently truncates at its context length; an object name that long is an error."""
    name = cfg.object_name or cfg.category
    assert cfg.prompts is not None  # validate() checks the prompt length only when prompts are set
    normal, abnormal = cfg.prompts.sentences(name)
    longest = max(normal + abnormal, key=len)
    context = int(loaded.tokenizer([longest]).shape[1])
    encode = getattr(loaded.tokenizer, "encode", None)
    if encode is not None and len(encode(longest)) + 2 > context:  # + start and end tokens
        raise ClipadError(
            f"object name '{name}' makes prompts longer than the text encoder's {context} tokens; "
            "use a shorter --object-name"
        )


def prompt_set_sha256(ps: PromptSet) -> str:
    blob = json.dumps({"normal": ps.normal, "abnormal": ps.abnormal, "templates": ps.templates}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def weights_record(loaded: LoadedModel) -> RandomWeights | FileWeights | OpenClipWeights:
    spec = loaded.spec
    if spec.random_weights:
        return RandomWeights(source="random", seed=spec.seed)
    if spec.weights is not None:
        assert loaded.weights_sha256 is not None  # load_model hashes every weights file it reads
        return FileWeights(source="file", path=str(Path(spec.weights).resolve()), sha256=loaded.weights_sha256)
    return OpenClipWeights(source="open_clip", tag=spec.pretrained)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import open_clip

    return {
        "clipad": __version__,
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


PARITY_INPUTS = "3 synthetic images (2 parts with defects, 1 noise), batch 3 and batch 1"


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (its inputs go there)."""
    return next(model.parameters()).device


def graph_parity(
    model: SDPModel | AnomalyDinoModel,
    size: Geometry,
    onnx_paths: dict[Precision, Path],
    gate: GateSet | None = None,
    max_batch: int = 1,
) -> tuple[dict[Precision, ParityFigures], dict[Precision, QualityGate] | None]:
    """Parity of each graph at batch 3 and batch 1 in ONNX Runtime: the FP32 graph against the
    reference, the FP16 graph against the FP32 graph, each entry listing its tolerance
    ``violations``; with ``gate`` (labelled images, run at ``max_batch``) the FP16 graph's
    quality gate against the FP32 graph."""
    images = parity_images(size, 3)
    with torch.no_grad():
        ref_map, ref_prob = (t.cpu().numpy() for t in model(torch.from_numpy(images).to(model_device(model))))
    baseline = Baseline(images, (ref_map, ref_prob), "pytorch reference", batch=len(images))
    figures: dict[Precision, ParityFigures] = {}
    gates: dict[Precision, QualityGate] = {}
    with OnnxRuntimeRunner(onnx_paths["fp32"], "fp32", "cpu", max_batch=max_batch) as fp32:
        for precision, path in onnx_paths.items():
            reduced = precision != "fp32"
            opened = OnnxRuntimeRunner(path, precision, "cpu", max_batch=max_batch) if reduced else nullcontext(fp32)
            with opened as runner:
                judged = gate_step(
                    runner,
                    baseline,
                    precision,
                    gate if reduced else None,
                    fp32,
                    "onnxruntime fp32",
                    inputs=PARITY_INPUTS,
                )
                single = compare(
                    (baseline.outputs[0][:1], baseline.outputs[1][:1]), runner.run(images[:1]), baseline.against
                )
            bad = list(judged.figures.violations or [])
            if single.rel_l2 > TOLERANCES[precision]["rel_l2"]:
                bad.append(f"batch-1 rel_l2 {single.rel_l2:.2e} > {TOLERANCES[precision]['rel_l2']:.0e}")
            figures[precision] = judged.figures.replace(batch1_rel_l2=single.rel_l2, violations=bad)
            if judged.gate is not None:
                gates[precision] = judged.gate
            if precision == "fp32":
                baseline = Baseline(images, judged.outputs, "fp32 onnx", batch=len(images))
    return figures, gates or None


def _clip_source(
    loaded: LoadedModel, cfg: ExportConfig, tasks: Tasks, timings: dict[str, float], object_name: str
) -> Source:
    """The CLIP methods' model: RVS text vectors, the method's SDPModel, with --reference the
    good images' memory baked into it; text features, heads and memory written beside it."""
    method = get_method(cfg.method)
    visual: Any = loaded.clip.visual  # open_clip's VisionTransformer (no type stubs)
    width, embed_dim = visual.conv1.out_channels, visual.proj.shape[1]
    heads: Heads | None = load_heads(cfg.heads_path, width, embed_dim) if cfg.heads_path else None
    warnings: list[str] = []
    t0 = time.perf_counter()
    assert cfg.prompts is not None  # callers set the prompt set before exporting (cli, reference_add, demo)
    tv = text_vectors(
        loaded.clip,
        loaded.tokenizer,
        object_name,
        cfg.rvs,
        cfg.rvs_profile,
        cfg.prompts,
        on_batch=tasks.add("text vectors", n_sentences(cfg.prompts)),
    )
    timings["text_s"] = time.perf_counter() - t0
    model = method.build(loaded, torch.from_numpy(tv.matrix), cfg.sigma, heads).eval()
    reference = baked = None
    if cfg.reference is not None:
        from clipad.deploy.reference_set import bake_reference

        step = tasks.add("reference memory", 1)
        t0 = time.perf_counter()
        # without a text path the map is the reference map alone (method.md 14)
        baked, reference = bake_reference(model, cfg.reference, only=not method.text_path)
        model = baked.model
        timings["reference_s"] = time.perf_counter() - t0
        step(1)
        if not reference.score.maxima:
            warnings.append(f"reference: {reference.score.method}")

    def write(stage: Path) -> None:
        np.save(stage / TEXT_FEATURES, np.ascontiguousarray(tv.matrix.T, dtype=np.float32))
        if heads is not None:
            save_heads(stage / HEADS_FILE, heads)
        if baked is not None:
            from clipad.deploy.reference_set import save_memory

            save_memory(stage / REFERENCE_MEMORY, baked.memory)

    return Source(
        model=model,
        model_name=loaded.spec.model,
        weights=weights_record(loaded),
        geometry=Geometry.square(loaded.image_size),
        mean=tuple(loaded.mean),
        std=tuple(loaded.std),
        sigma=cfg.sigma,
        write=write,
        rvs=Rvs.create(
            method=cfg.rvs,
            profile=cfg.rvs_profile,
            dbscan=dict(zip(("eps", "min_samples"), dbscan_params(cfg.rvs_profile), strict=False))
            if cfg.rvs == "dbscan"
            else None,
            used=[tv.normal.used, tv.abnormal.used],
            notes=tv.summary()["notes"],
        ),
        prompts=Prompts.create(
            set=cfg.prompts.name,
            source=cfg.prompts_source,
            sha256=prompt_set_sha256(cfg.prompts),
            n_normal=len(cfg.prompts.normal) * len(cfg.prompts.templates),
            n_abnormal=len(cfg.prompts.abnormal) * len(cfg.prompts.templates),
        ),
        # heads is set exactly when heads_path is
        heads_sha256=file_sha256(Path(cast(Path, cfg.heads_path))) if heads else None,
        reference=reference,
        warnings=warnings,
    )


def export(loaded: LoadedModel | DinoWeights, cfg: ExportConfig, tasks: Tasks) -> Artifacts:
    """Run the whole export; returns the finished artifact directory. ``loaded``: the method's
    weights (``Method.load``: a LoadedModel, or DinoWeights for AnomalyDINO)."""
    from clipad.deploy.graph_io import io_spec
    from clipad.deploy.onnx_graph import export_onnx

    validate(cfg, loaded if isinstance(loaded, LoadedModel) else None)
    method = get_method(cfg.method)
    object_name = cfg.object_name or cfg.category
    timings: dict[str, float] = {}
    if isinstance(loaded, LoadedModel):
        source = _clip_source(loaded, cfg, tasks, timings, object_name)
    else:
        from clipad.deploy.anomalydino_export import dino_source

        source = dino_source(loaded, cfg, tasks, timings)
    model = source.model
    warnings: list[str] = [*cfg.notes, *source.warnings]

    out = resolve_out(cfg.out)  # a link is written through: its target is the directory (and its lock)
    triton: list[StagedRepo] = []  # the Triton models, staged
    with artifact_lock(out), ExitStack() as cleanup:  # one writer per artifact directory (calibrate waits)
        cleanup.callback(_discard, triton)
        with staging_dir(out) as stage:
            source.write(stage)
            step = tasks.add("ONNX export", 1)
            t0 = time.perf_counter()
            export_onnx(model, stage / ONNX_FP32, source.geometry.hw)
            timings["onnx_s"] = time.perf_counter() - t0
            step(1)
            paths: dict[Precision, Path] = {"fp32": stage / ONNX_FP32}
            fp16_info = None
            if "fp16" in cfg.precisions:
                from clipad.deploy.fp16 import convert_fp16

                step = tasks.add("FP16 graph", 1)
                t0 = time.perf_counter()
                fp16_info = convert_fp16(stage / ONNX_FP32, stage / ONNX_FP16)
                timings["fp16_s"] = time.perf_counter() - t0
                step(1)
                paths["fp16"] = stage / ONNX_FP16
            gate_set = None
            if cfg.gate_root is not None:  # read once: the ONNX and the OpenVINO gates use the same images
                from clipad.deploy.quality_gate import gate_images

                gate_set = gate_images(
                    Path(cfg.gate_root), cfg.category, source.geometry, cfg.max_auroc_drop, method.image_score
                )
            step = tasks.add(
                "parity" + (" and quality gate" if gate_set and "fp16" in paths else "") + " (ONNX Runtime)", 1
            )
            t0 = time.perf_counter()
            parity, gates = graph_parity(model, source.geometry, paths, gate_set, cfg.max_batch)
            timings["parity_s"] = time.perf_counter() - t0
            step(1)
            for precision, f in list(parity.items()):
                if not f.violations:
                    continue
                reason = f"parity failed for the {precision} graph ({'; '.join(f.violations)})"
                if precision == "fp32":
                    raise ClipadError(reason + "; nothing was written")
                if cfg.gate_root is not None:
                    # Labelled images judge it below: map agreement on random synthetic frames
                    # is recorded, not decisive (as for INT8 and OpenVINO's reduced precisions).
                    warnings.append(
                        f"the {precision} graph misses the map-agreement limits ({'; '.join(f.violations)}); "
                        "its AUROC quality gate decides whether it is kept"
                    )
                    continue
                _drop_fp16(stage, cfg, parity, warnings, reason)
            if "fp16" in parity and fp16_info:
                parity["fp16"] = parity["fp16"].replace(nodes=fp16_info)
            if gates is not None and not gates["fp16"].passed:
                g = gates["fp16"]
                _drop_fp16(
                    stage,
                    cfg,
                    parity,
                    warnings,
                    f"the fp16 graph fails its quality gate (pixel AUROC drop {g.pixel_drop_points:.2f}, image "
                    f"{g.image_drop_points:.2f} points > {g.max_drop_points:g} on {g.n_images} labelled images)",
                )
            manifest = Manifest.create(
                format_version=FORMAT_VERSION,
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                category=cfg.category,
                object_name=object_name,
                model=source.model_name,
                weights=source.weights,
                mode=method.name,
                heads_sha256=source.heads_sha256,
                rvs=source.rvs,
                prompts=source.prompts,
                image_size=source.geometry.square_size or list(source.geometry.hw),
                mean=list(source.mean),
                std=list(source.std),
                sigma=source.sigma,
                max_batch=cfg.max_batch,
                precisions=[p for p in paths if (stage / ONNX_FILES[p]).is_file()],
                # Both graphs take and give the same tensors (the FP16 graph casts inside), so the FP32
                # graph's spec is the one.
                onnx={**io_spec(paths["fp32"]), "opset": 17},
                parity={"tolerances": {p: TOLERANCES[p] for p in parity}, **parity, "gates": gates},
                calibration=None,
                timings_s={k: round(v, 2) for k, v in timings.items()},
                warnings=warnings,
                versions=_versions(),
                files=hash_files(stage),
                reference=source.reference,
                anomalydino=source.anomalydino,
            )
            if cfg.openvino:
                manifest = _openvino_step(model, source.geometry, stage, manifest, tasks, timings, gate_set)
            if cfg.engine:
                from clipad.deploy.tensorrt.build import build_engine

                step = tasks.add("TensorRT engine", 1)
                meta = build_engine(stage, manifest, opt_batch=cfg.opt_batch)
                manifest = manifest.with_engine(meta, hash_files(stage))
                step(1)
            manifest.write(stage / MANIFEST)
            if cfg.triton_repo is not None:  # written and validated before the artifacts are swapped in
                from clipad.deploy.triton_repo import stage_triton_repo

                triton.append(stage_triton_repo(Artifacts(stage, manifest), cfg.triton_repo))
        for models in triton:
            models.commit()
    return Artifacts(Path(cfg.out), manifest)


def _discard(staged: list[StagedRepo]) -> None:
    """Remove staged Triton models that were not swapped in (the export failed)."""
    for models in staged:
        models.discard()


def _drop_fp16(
    stage: Path, cfg: ExportConfig, parity: dict[Precision, ParityFigures], warnings: list[str], reason: str
) -> None:
    """The FP16 graph is not good enough (``reason``): with --precision fp16 the export fails,
    writing nothing; with all it keeps the FP32 artifacts and drops the FP16 graph, saying so loudly."""
    if cfg.precision == "fp16":
        raise ClipadError(reason + "; nothing was written")
    (stage / ONNX_FP16).unlink()
    parity["fp16"] = parity["fp16"].replace(dropped=True)
    warnings.append(reason + f"; {ONNX_FP16} was not kept")


def _openvino_step(
    model: SDPModel | AnomalyDinoModel,
    size: Geometry,
    stage: Path,
    manifest: Manifest,
    tasks: Tasks,
    timings: dict[str, float],
    gate_set: GateSet | None = None,
) -> Manifest:
    """The OpenVINO IRs and their parity against the reference on 3 parity images + 2 more parts;
    with ``gate_set`` (``quality_gate.gate_images``) the quality gate of every reduced precision."""
    from clipad.deploy.openvino_export import ir_hashes, make_openvino

    step = tasks.add("OpenVINO IR (fp32, bf16, int8)", 1)
    t0 = time.perf_counter()
    images = np.concatenate([parity_images(size, 3), parity_images(size, 3, seed=1)[:2]])
    with torch.no_grad():
        ref_map, ref_prob = (t.cpu().numpy() for t in model(torch.from_numpy(images).to(model_device(model))))
    calibration = parity_images(size, 9, seed=2)[:8]
    entry, warnings = make_openvino(stage, images, (ref_map, ref_prob), calibration, manifest.max_batch, gate_set)
    timings["openvino_s"] = time.perf_counter() - t0
    step(1)
    return manifest.with_openvino(entry, ir_hashes(stage)).replace(
        warnings=[*manifest.warnings, *warnings],
        timings_s={**manifest.timings_s, "openvino_s": round(timings["openvino_s"], 2)},
    )
