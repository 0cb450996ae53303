"""`clipad demo`: a fully offline run on a new machine, from nothing to heatmaps that find defects.

Synthesises a small dataset (the ``washer`` category, defects drawn at twice the default size) and
a short video of its test parts, exports a model with random weights in the normal-reference mode
(``--method reference``: 8 good images baked into the graph as a nearest-neighbour memory, README "A
few good images"), calibrates it on 20 other good images, streams the video through the runtime,
scores the test images, measures image and pixel AUROC against the dataset's labels and masks, and
writes everything, a picture (``demo.png``) and a short report into one folder.

Random weights carry no meaning of their own: the zero-shot (text) path would give meaningless
maps, so the demo leaves it out. The distance of each patch to the nearest good patch is the
signal, and it finds the synthetic defects even through a random backbone.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from clipad.calibration.calibrate import calibrate
from clipad.core.errors import ClipadError
from clipad.core.owned import FolderKind, check_out, clear, resolve_out, within, write_marker
from clipad.core.progress import Tasks
from clipad.data import Sample, load_split
from clipad.data.colour import to_bgr, to_rgb
from clipad.data.geometry import Geometry
from clipad.data.images import load_mask, read_image, read_rgb
from clipad.data.synth import SYNTH, make_synthetic
from clipad.deploy.artifacts import ARTIFACTS
from clipad.deploy.export import ExportConfig, export
from clipad.deploy.reference_set import ReferenceConfig
from clipad.evaluation.metrics import binary_metrics
from clipad.model.loading import TINY_MODEL, WeightSpec, check_model_name, load_model
from clipad.model.prompts import PROMPT_SETS
from clipad.runtime.backends import select_backend
from clipad.runtime.overlay import overlay
from clipad.runtime.pipeline import Pipeline
from clipad.runtime.predict import PREDICTION_FILES, PREDICTIONS, predict
from clipad.runtime.runfiles import video_pattern
from clipad.runtime.scoring import Calibration
from clipad.runtime.sinks import EventsSink, Sink, VideoSink
from clipad.runtime.sources import VideoFileSource

CATEGORY = "washer"
SHOTS = 8  # good images baked into the graph (the reference memory)
N_CALIBRATION = 20  # other good images, for `calibrate`
N_GOOD, N_DEFECT = 12, 6  # test parts: 12 good, 6 per defect type (scratch, spot)
DEFECT_SCALE = 2.0  # defects twice the default size: the tiny model sees 96 x 96 pixels
TARGET_FPR = 0.1
REFERENCE_DIR = "reference_good"
PICTURE = "demo.png"
SHOWN = 3  # good and defective parts in the picture, each
DEMO_NOTE = (
    "clipad demo: random weights, so only the normal-reference signal (8 good images baked into the graph) "
    "is meaningful; zero-shot text scores are not"
)
PANEL = (200, 160)  # width, height of one picture panel (the 160 x 128 images scaled by 1.25)


_TOP_FILES = {"input.avi", "events.jsonl", ".events.jsonl.lock", PICTURE, "report.json", "report.md"}
_REFERENCE = re.compile(r"\d{3,}\.png")
_VIDEO = video_pattern(Path("overlay.mp4"))
_OWNERS = (
    within("data", SYNTH.owns),
    within(REFERENCE_DIR, lambda rel: _REFERENCE.fullmatch(rel) is not None),
    within(f"artifacts/{CATEGORY}", ARTIFACTS.owns),
    within("predictions", PREDICTION_FILES.owns),
)
DEMO = FolderKind(
    "demo",
    lambda rel: (
        rel in _TOP_FILES
        or _VIDEO.fullmatch(rel) is not None
        or rel == f"artifacts/.{CATEGORY}.lock"
        or any(owns(rel) for owns in _OWNERS)
    ),
)


@dataclass(frozen=True)
class Part:
    """One test image with its prediction record and anomaly map (model resolution)."""

    sample: Sample
    record: dict[str, Any]
    amap: np.ndarray


def write_demo_video(path: Path, frames: int, images: list[np.ndarray], fps: float = 10.0) -> None:
    """``frames`` frames cycling through ``images`` (RGB uint8, all of one size) as MJPG."""
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (w, h))
    for i in range(frames):
        writer.write(to_bgr(images[i % len(images)]))
    writer.release()


def split_reference(data: Path, dest: Path, shots: int) -> Path:
    """Move the first ``shots`` training images of the category to ``dest``: the reference set,
    kept apart from the good images calibration reads (it refuses reference images)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for p in sorted((data / CATEGORY / "train" / "good").iterdir())[:shots]:
        shutil.move(p, dest / p.name)
    return dest


def run_demo(
    out: Path,
    model: str = TINY_MODEL,
    frames: int = 40,
    tasks: Tasks | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Run the whole demo into ``out``; returns what the report says.

    ``out`` must be new, empty or an earlier demo's folder holding nothing but what the demo
    writes (``clipad.core.owned``); the earlier demo's files are removed first, and report.md is
    written last, so a folder without one is an interrupted demo."""
    check_out(resolve_out(out), DEMO)  # new, empty, or an earlier demo's and nothing else
    check_model_name(model)  # before anything is written
    log(DEMO_NOTE)
    tasks = tasks or Tasks(None)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    clear(out, DEMO)  # the earlier demo's files go first: none of them sits beside the new ones
    write_marker(out, DEMO)
    data = out / "data"
    make_synthetic(
        data, n_train=N_CALIBRATION + SHOTS, n_good=N_GOOD, n_defect=N_DEFECT, defect_scale=DEFECT_SCALE, force=True
    )
    reference = split_reference(data, out / REFERENCE_DIR, SHOTS)
    good = data / CATEGORY / "train" / "good"
    log(f"synthetic dataset: {data} (reference: {SHOTS} good images in {reference})")
    samples = load_split("mvtec", data, [CATEGORY])[CATEGORY]
    video = out / "input.avi"
    write_demo_video(video, frames, [read_rgb(s.image) for s in samples])
    log(f"input video: {video} ({frames} frames of the test parts)")
    loaded = load_model(WeightSpec(model=model, random_weights=True, seed=0), "cpu")
    art = export(
        loaded,
        ExportConfig(
            category=CATEGORY,
            out=out / "artifacts" / CATEGORY,
            method="reference",
            prompts=PROMPT_SETS["industrial"],
            max_batch=8,
            precision="all",
            reference=ReferenceConfig(str(reference), SHOTS),
        ),
        tasks,
    )
    log(f"artifacts: {art.root} (mode reference, {SHOTS} good images baked in)")
    backend = select_backend(art, "auto", "cpu")
    calibrate(art, backend, str(good), tasks, target_fpr=TARGET_FPR)
    cal = Calibration.from_manifest(art.manifest)
    log(f"calibrated on {good} ({N_CALIBRATION} good images, false-positive rate {TARGET_FPR})")
    video_sink = VideoSink(out / "overlay.mp4")  # written as overlay-<run id>-<source tag>.mp4 (runfiles)
    sinks: list[Sink] = [EventsSink(out / "events.jsonl", run=video_sink.run), video_sink]
    summary = Pipeline(
        backend,
        [VideoFileSource(str(video))],
        art.geometry,
        cal,
        sinks,
        status_every=1e9,
        log=lambda s: None,
        needs_view=True,
    ).run()
    log(f"runtime: {summary.line()}")
    pred_dir = out / "predictions"
    preds = predict(
        backend,
        str(data / CATEGORY / "test"),
        pred_dir,
        art.geometry,
        cal,
        tasks,
        save_maps=True,
        save_overlays=True,
    )
    parts = read_parts(samples, pred_dir)
    figures = detection_figures(parts, art.geometry)
    log(f"test set: image AUROC {figures['image_auroc']:.3f}, pixel AUROC {figures['pixel_auroc']:.3f}")
    picture = write_picture(out / PICTURE, pick_parts(parts))
    log(f"picture: {picture}")
    report: dict[str, Any] = {
        "model": model,
        "weights": "random (seed 0): only the reference (nearest-neighbour) signal is meaningful",
        "mode": "reference",
        "reference": {"images": SHOTS, "folder": str(reference)},
        "backend": backend.describe(),
        "parity": {
            p: {k: getattr(f, k) for k in ("rel_l2", "prob_max_abs", "top1pct_agreement")}
            for p in ("fp32", "fp16")
            if (f := art.manifest.parity.figures(p)) is not None
        },
        "precisions_kept": list(art.manifest.precisions),
        "export_warnings": list(art.manifest.warnings),
        "runtime": {"frames": summary.frames, "fps": round(summary.fps, 1), "summary": summary.line()},
        "video": video_sink.files[0].name if video_sink.files else None,
        "predictions": preds.images,
        "labelled_anomalous": sum(p.record["label"] == "anomalous" for p in parts),
        "test_images": {
            "good": sum(p.sample.label == 0 for p in parts),
            "defective": sum(p.sample.label for p in parts),
        },
        **figures,
        "map_size": art.manifest.image_size,
        "picture": str(picture),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report, out))
    return report


def read_parts(samples: list[Sample], pred_dir: Path) -> list[Part]:
    """The test samples joined with their records of predictions.jsonl (by resolved path) and maps."""
    records = [json.loads(line) for line in (pred_dir / PREDICTIONS).read_text().splitlines()]
    by_path = {Path(r["source"]).resolve(): r for r in records}
    parts = []
    for s in samples:
        r = by_path.get(s.image.resolve())
        if r is None or r["files"]["map"] is None:
            raise ClipadError(f"the demo has no prediction for {s.image}")
        parts.append(Part(s, r, np.load(pred_dir / r["files"]["map"])))
    return parts


def detection_figures(parts: list[Part], size: Geometry) -> dict[str, float | None]:
    """Image AUROC of the calibrated fused score (the score the label thresholds) and pixel AUROC
    of the maps against the masks resized as `clipad eval` resizes them (method.md section 2)."""
    labels = np.array([p.sample.label for p in parts])
    fused = np.array([p.record["fused"] for p in parts], dtype=np.float64)
    masks = np.stack(
        [load_mask(p.sample.mask, size) if p.sample.mask is not None else np.zeros(size.hw, bool) for p in parts]
    )
    maps = np.stack([p.amap for p in parts])
    return {
        "image_auroc": binary_metrics(labels, fused)["auroc"],
        "pixel_auroc": binary_metrics(masks, maps)["auroc"],
    }


def pick_parts(parts: list[Part]) -> list[Part]:
    """The first ``SHOWN`` good parts and ``SHOWN`` defective ones, defect types taken in turn."""
    good = [p for p in parts if p.sample.label == 0][:SHOWN]
    kinds: dict[str, list[Part]] = {}
    for p in parts:
        if p.sample.label == 1:
            kinds.setdefault(p.sample.defect, []).append(p)
    rounds = [ps[i] for i in range(max(map(len, kinds.values()), default=0)) for ps in kinds.values() if i < len(ps)]
    return good + rounds[:SHOWN]


def _text(img: np.ndarray, text: str, org: tuple[int, int], colour=(0, 0, 0), scale: float = 0.45) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def write_picture(path: Path, parts: list[Part]) -> Path:
    """A PNG grid, one column per part: the image, its ground-truth mask (white = defect), the
    heatmap overlay (runtime/overlay.py; one colour scale for every panel, from the lowest to the
    highest map value shown) and a caption: the part, its calibrated score and pass or fail."""
    w, h = PANEL
    gap, left, caption = 6, 112, 44
    lo = float(min(p.amap.min() for p in parts))
    hi = float(max(p.amap.max() for p in parts))
    grid = np.full((gap + 3 * (h + gap) + caption, left + len(parts) * (w + gap), 3), 255, np.uint8)
    for row, name in enumerate(("image", "ground truth", "heatmap")):
        _text(grid, name, (8, gap + row * (h + gap) + h // 2 + 5), scale=0.5)
    for col, p in enumerate(parts):
        x = left + col * (w + gap)
        image = cv2.resize(read_rgb(p.sample.image), (w, h), interpolation=cv2.INTER_LINEAR)
        mask: np.ndarray = np.zeros((h, w), np.uint8)
        if p.sample.mask is not None:
            truth = (np.asarray(read_image(p.sample.mask)) > 0).astype(np.uint8) * 255
            mask = cv2.resize(truth, (w, h), interpolation=cv2.INTER_NEAREST)
        panels = (image, to_rgb(mask), overlay(image, p.amap, lo, hi))
        for row, panel in enumerate(panels):
            y = gap + row * (h + gap)
            grid[y : y + h, x : x + w] = panel
        y = gap + 3 * (h + gap)
        _text(grid, f"{p.sample.defect} {p.sample.image.stem}", (x + 2, y + 14))
        label = p.record["label"]
        verdict = {"normal": "pass", "anomalous": "FAIL"}.get(label, str(label))
        score = p.record["score"]
        colour = (0, 140, 0) if label == "normal" else (200, 0, 0)
        _text(grid, f"score {score:.2f}  {verdict}" if score is not None else verdict, (x + 2, y + 34), colour)
    # 256 colours (PIL's octree): a quarter of the bytes of the full-colour grid, for the README
    Image.fromarray(grid).quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    return path


def _markdown(r: dict[str, Any], out: Path) -> str:
    par = "\n".join(
        f"  - {p}: anomaly_map rel. L2 {v['rel_l2']:.1e}, image_prob error {v['prob_max_abs']:.1e}, "
        f"top-1% agreement {v['top1pct_agreement']:.3f}"
        for p, v in r["parity"].items()
    )
    t = r["test_images"]
    notes = "".join(f"- export note: {w}\n" for w in r["export_warnings"])
    return f"""# clipad demo

**Random weights: only the reference (nearest-neighbour) signal is meaningful.** The model was
exported in the normal-reference mode (`--method reference`): {r["reference"]["images"]} good images
(`{REFERENCE_DIR}/`) are baked into the graph, and each patch is scored by its distance to the
nearest good patch. Zero-shot (text) scores would be meaningless with random weights, so this
export has no text path. With real weights, the fused mode adds the zero-shot map.

![demo: image, ground truth, heatmap, score]({PICTURE})

- detection on the test set ({t["good"]} good, {t["defective"]} defective {CATEGORY} parts):
  **image AUROC {r["image_auroc"]:.3f}** (the calibrated fused score of `predictions/predictions.jsonl`),
  **pixel AUROC {r["pixel_auroc"]:.3f}** (the maps in `predictions/maps/` against the masks in
  `data/{CATEGORY}/ground_truth/`, resized to the maps' {r["map_size"]} x {r["map_size"]} pixels as `clipad eval` does)
- model: {r["model"]}, backend: {r["backend"]}, graphs kept: {", ".join(r["precisions_kept"])}
- export parity against the PyTorch reference:
{par}
{notes}- runtime over `input.avi` (the test parts in turn): {r["runtime"]["summary"]}
- calibration: {N_CALIBRATION} other good images, threshold for a false-positive rate of {TARGET_FPR}
- predictions: {r["predictions"]} images in `predictions/predictions.jsonl`
  ({r["labelled_anomalous"]} labelled anomalous), maps in `predictions/maps/`, overlays in `predictions/overlays/`
- picture: `{PICTURE}`: {SHOWN} good and {SHOWN} defective parts; the heatmap row shares one colour
  scale; the caption gives the calibrated score (0.5 at the threshold) and pass or FAIL
- total time: {r["seconds"]} s

Files: `{out}/{r["video"]}` (heatmap overlay video), `events.jsonl` (one record per frame),
`artifacts/{CATEGORY}/` (ONNX graphs and manifest), `data/` (the synthetic dataset).

With real weights (an open_clip state dict copied to this machine) and a few good parts:

    clipad export --category bottle --weights vit_b16plus_240_laion400m_e31.safetensors \\
        --reference good_parts/ --shots 4
    clipad calibrate --artifacts artifacts/bottle --good more_good_parts/
    clipad run --camera 0 --artifacts artifacts/bottle --events events.jsonl --save overlay.mp4
"""


def describe_demo(report: dict[str, Any], out: Path) -> str:
    """The line `clipad demo` prints for ``report`` (``run_demo``'s) of a demo written to ``out``."""
    return (
        f"demo finished in {report['seconds']} s: image AUROC {report['image_auroc']:.3f}, pixel AUROC "
        f"{report['pixel_auroc']:.3f}; report {out / 'report.md'}, picture {report['picture']}, "
        f"overlay video {out / str(report['video'])}"
    )
