"""The package's shape: layers import only downwards, no import circles, serving without torch,
and a wheel that installs nothing but ``clipad``.

Layers, bottom to top: the reference and export packages (``clipad.core``, ``.model``,
``.data``, ``.evaluation``, ``.training``, ``.deploy``) -> ``clipad.calibration`` ->
``clipad.runtime`` -> ``clipad.cli``. Every import statement of every module counts, also the
ones inside functions.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# repository folder -> import name (pyproject.toml's package-dir)
FOLDERS = {"clipad_export": "clipad", "calibration": "clipad.calibration", "runtime": "clipad.runtime"}
LAYERS = {"clipad.calibration": 1, "clipad.runtime": 2, "clipad.cli": 3, "clipad.__main__": 3}


def layer(module: str) -> int:
    for prefix, n in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return n
    return 0


def modules() -> dict[str, Path]:
    """Import name -> file, for every module of the package."""
    out = {"clipad.cli": ROOT / "cli.py"}
    for folder, name in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.is_symlink():  # clipad_export/cli.py -> ../cli.py
                continue
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = path
    return out


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The clipad modules ``module`` imports (``from pkg import submodule`` counts as the submodule)."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top not in ("clipad_export", "runtime", "calibration", "cli"), (
                f"{path.relative_to(ROOT)} imports '{name}': import the package as clipad.* only"
            )
            if top == "clipad":
                while name not in known and "." in name:
                    name = name.rsplit(".", 1)[0]
                found.add(name)
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports(m, p, known) for m, p in mods.items()}


def test_no_upward_import():
    bad = [
        f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
        for m, deps in graph().items()
        for d in sorted(deps)
        if layer(d) > layer(m)
    ]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_circle():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_every_package_folder_is_installed():
    """pyproject.toml lists packages by import name; a new folder must be added there."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {m for m, p in modules().items() if p.name == "__init__.py"}
    assert folders == listed


SERVE = r"""
import json, sys
import numpy as np
from clipad.deploy.artifacts import load_artifacts
from clipad.runtime.backends import select_backend
from clipad.runtime.predict import predict
from clipad.runtime.scoring import score_batch
from clipad.core.progress import Tasks
from pathlib import Path
art = load_artifacts(sys.argv[1])
be = select_backend(art, "onnxruntime", "cpu", "fp32")
res = predict(be, sys.argv[2], Path(sys.argv[3]), art.geometry, None, Tasks(None), save_maps=True, save_overlays=True)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "open_clip", "torchvision"))
print(json.dumps({"images": res.images, "heavy": heavy}))
"""


def test_serving_with_onnxruntime_does_not_import_torch(tmp_path, tiny):
    from clipad.core.progress import Tasks
    from clipad.data.synth import make_synthetic
    from clipad.deploy.export import ExportConfig, export
    from clipad.model.prompts import PROMPT_SETS

    art = export(
        tiny,
        ExportConfig(category="fabric", out=tmp_path / "art", prompts=PROMPT_SETS["industrial"], precision="fp32"),
        Tasks(None),
    )
    make_synthetic(tmp_path / "data", n_train=0, n_good=2, n_defect=1)
    proc = subprocess.run(
        [sys.executable, "-c", SERVE, str(art.root), str(tmp_path / "data" / "fabric" / "test"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["images"] == 4
    assert res["heavy"] == [], f"serving imported {res['heavy'][:5]}"


def test_wheel_installs_only_the_clipad_package(tmp_path):
    """The built wheel holds one top-level import name, ``clipad``, with the CLI and configs
    (built without isolation from the venv's setuptools, which torch requires anyway)."""
    src = tmp_path / "src"  # a copy, so that setuptools' build/ folder does not land in the checkout
    shutil.copytree(
        ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__")
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("clipad-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"clipad"}, tops
    for needed in (
        "clipad/cli.py",
        "clipad/__main__.py",
        "clipad/runtime/pipeline.py",
        "clipad/calibration/calibrate.py",
        "clipad/model/model_configs/clipad-tiny.json",
        "clipad/deploy/export.py",
    ):
        assert needed in names, needed
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "clipad = clipad.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
