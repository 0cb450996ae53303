"""Outputs of one clipad checkout, recorded so that two checkouts can be compared.

A refactoring must not change what clipad computes. This script runs the same commands
(synthetic data, eval, train, export in every method, predict) with random weights through
the ``clipad`` CLI of a given checkout and records what they produce: eval figures, the
manifest's parity figures, the sha256 of every graph, and the scores and maps of predict.
``compare`` then reports the largest relative difference per output between two records.

    # record the current checkout (its package view is built like scripts/typecheck.py's)
    python scripts/equivalence_check.py record --out /tmp/eq-new
    # record another checkout (a git worktree), then compare
    python scripts/equivalence_check.py record --checkout /tmp/base --out /tmp/eq-old
    python scripts/equivalence_check.py compare /tmp/eq-old /tmp/eq-new

``--models`` chooses the models (default: clipad-tiny and ViT-B-16-plus-240; ViT-B takes
about ten minutes on two cores). The CLI of the recorded checkout must accept ``--mode`` or
``--method``; the script asks ``export --help`` which.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY, VITB = "clipad-tiny", "ViT-B-16-plus-240"


def package_view(checkout: Path, dest: Path) -> Path:
    """``dest/clipad`` as links into ``checkout`` (the package-dir mapping of pyproject.toml)."""
    pkg = dest / "clipad"
    pkg.mkdir()
    for entry in (checkout / "clipad_export").iterdir():
        if entry.name not in ("cli.py", "__pycache__"):
            (pkg / entry.name).symlink_to(entry)
    for name in ("calibration", "runtime", "cli.py"):
        (pkg / name).symlink_to(checkout / name)
    return dest


class Cli:
    def __init__(self, view: Path, log: Path) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(view), "PYTHONHASHSEED": "0"}
        self.log = log
        help_text = self._run("export", "--help", capture=True)
        self.method_opt = "--method" if "--method" in help_text else "--mode"

    def _run(self, *args: str, capture: bool = False) -> str:
        cmd = [sys.executable, "-m", "clipad", *args]
        with self.log.open("a") as log:
            log.write("$ clipad " + " ".join(args) + "\n")
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=False)
        with self.log.open("a") as log:
            log.write(proc.stdout[-4000:] + proc.stderr[-4000:] + "\n")
        if proc.returncode != 0:
            raise SystemExit(f"clipad {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
        return proc.stdout

    def __call__(self, *args: str) -> str:
        return self._run(*args)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(checkout: Path, out: Path, models: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=False)
    with tempfile.TemporaryDirectory(prefix="clipad-eq-") as tmp:
        cli = Cli(package_view(checkout, Path(tmp)), out / "commands.log")
        summary: dict[str, object] = {"checkout": str(checkout)}
        synth = out / "synth"
        cli("synth", "--out", str(synth), "--n-train", "4", "--n-good", "4", "--n-defect", "3")
        test_images = synth / "washer" / "test" / "*" / "*.png"
        for model in models:
            tag = "tiny" if model == TINY else "vitb"
            weights = ["--model", model, "--random-weights", "--seed", "0"]
            cats = ["--categories", "washer"]
            common = ["--dataset", "mvtec", "--root", str(synth), *cats, *weights, "--quiet"]
            heads = out / f"{tag}_heads.safetensors"
            cli("train", *common, "--out", str(heads), "--epochs", "1", "--batch-size", "4")
            runs = {
                "sdp": [],
                "sdp+": ["--heads", str(heads)],
                "reference": ["--reference", str(synth / "washer" / "train" / "good"), "--shots", "4"],
            }
            for method, extra in runs.items():
                name = f"{tag}_{method}"
                eval_extra = extra if method != "reference" else ["--shots", "2", "--shot-seeds", "0"]
                cli("eval", *common, cli.method_opt, method, *eval_extra, "--out", str(out / f"{name}_eval.json"))
                art = out / f"{name}_art"
                cli("export", "--category", "washer", cli.method_opt, method, *extra, *weights, "--out", str(art))
                manifest = json.loads((art / "manifest.json").read_text())
                graphs = {p.name: sha256(p) for p in sorted(art.iterdir()) if p.suffix in (".onnx", ".xml", ".bin")}
                preds = out / f"{name}_pred"
                cli(
                    "predict",
                    str(test_images),
                    "--artifacts",
                    str(art),
                    "--backend",
                    "onnxruntime",
                    "--precision",
                    "fp32",
                    "--out",
                    str(preds),
                    "--save-maps",
                    "--quiet",
                )
                summary[name] = {"parity": manifest.get("parity"), "graphs": graphs}
        (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    print(f"recorded {checkout} in {out}")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-30)
    return float(np.abs(a - b).max()) / scale


def _numbers(obj: object, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON value, keyed by its path."""
    found: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            found.update(_numbers(v, f"{prefix}.{k}"))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found.update(_numbers(v, f"{prefix}[{i}]"))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        found[prefix] = float(obj)
    return found


def compare(old: Path, new: Path, rtol: float) -> int:
    a, b = (json.loads((d / "summary.json").read_text()) for d in (old, new))
    worst = 0.0
    failures: list[str] = []
    for name in sorted(k for k in a if k != "checkout"):
        if name not in b:
            failures.append(f"{name}: missing in {new}")
            continue
        same = sum(a[name]["graphs"].get(g) == h for g, h in b[name]["graphs"].items())
        print(
            f"{name}: graphs byte-identical {same}/{len(b[name]['graphs'])}"
            + ("" if a[name]["graphs"].keys() == b[name]["graphs"].keys() else " (file lists differ)")
        )
        pa, pb = _numbers(a[name]["parity"]), _numbers(b[name]["parity"])
        for key in sorted(pa.keys() | pb.keys()):
            if key not in pa or key not in pb:
                print(f"  parity{key}: only in {'old' if key in pa else 'new'}")
                continue
            if "seconds" in key or "time" in key:
                continue
            r = _rel(np.array(pa[key]), np.array(pb[key]))
            worst = max(worst, r)
            if r > rtol:
                failures.append(f"{name} parity{key}: {pa[key]} -> {pb[key]}")
        ea, eb = (_numbers(json.loads((d / f"{name}_eval.json").read_text())) for d in (old, new))
        for key in sorted(ea.keys() & eb.keys()):
            if "seconds" in key or "timing" in key:  # wall-clock durations differ run to run
                continue
            r = _rel(np.array(ea[key]), np.array(eb[key]))
            worst = max(worst, r)
            if r > rtol:
                failures.append(f"{name} eval{key}: {ea[key]} -> {eb[key]}")
        pred_a, pred_b = old / f"{name}_pred", new / f"{name}_pred"
        ra = [json.loads(x) for x in (pred_a / "predictions.jsonl").read_text().splitlines()]
        rb = [json.loads(x) for x in (pred_b / "predictions.jsonl").read_text().splitlines()]
        if len(ra) != len(rb):
            failures.append(f"{name}: {len(ra)} vs {len(rb)} predictions")
        map_worst = score_worst = 0.0
        for x, y in zip(ra, rb, strict=False):
            for key in ("score", "image_prob", "map_max", "raw_score"):
                if key in x and key in y and x[key] is not None:
                    score_worst = max(score_worst, _rel(np.array(x[key]), np.array(y[key])))
        for m in sorted((pred_a / "maps").glob("*.npy")):
            map_worst = max(map_worst, _rel(np.load(m), np.load(pred_b / "maps" / m.name)))
        print(f"  {len(ra)} predictions: scores max rel {score_worst:.2e}, maps max rel {map_worst:.2e}")
        worst = max(worst, map_worst, score_worst)
        if max(map_worst, score_worst) > rtol:
            failures.append(f"{name}: predictions differ (scores {score_worst:.2e}, maps {map_worst:.2e})")
    print(f"largest relative difference over every figure, score and map: {worst:.2e} (limit {rtol:g})")
    for f in failures:
        print("DIFFERS:", f)
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("--checkout", type=Path, default=ROOT)
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--models", default=f"{TINY},{VITB}")
    cmp = sub.add_parser("compare")
    cmp.add_argument("old", type=Path)
    cmp.add_argument("new", type=Path)
    cmp.add_argument("--rtol", type=float, default=1e-6)
    args = parser.parse_args()
    if args.cmd == "record":
        record(args.checkout.resolve(), args.out, args.models.split(","))
        return 0
    return compare(args.old, args.new, args.rtol)


if __name__ == "__main__":
    sys.exit(main())
