"""Every install command the docs give for clipad resolves to one consistent stack.

Two mistakes break a GPU machine without any error at install time: both ONNX Runtime wheels in
one venv (both install the ``onnxruntime`` module, and the GPU execution providers disappear,
microsoft/onnxruntime#26996), and CUDA majors that disagree (cuda-python's major must be the CUDA
major of the TensorRT build; onnxruntime-gpu's TensorRT provider links TensorRT 10). So each
command in README.md and docs/*.md is dry-run against the package index (``pip install --dry-run
--report``: nothing is installed) and the packages pip would install are checked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path
from typing import NamedTuple

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = [README, *(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# NVIDIA's index is unreachable here and in CI (CI reaches PyPI only); see tensorrt_constraints.
NVIDIA_INDEX = "https://pypi.nvidia.com"
PYPI = "https://pypi.org/simple/pip/"
PIP_TIMEOUT_S = 600
TORCH = "2.14.1"
NETWORK_ATTEMPTS = 3
NETWORK_FAILURE = re.compile(r"issue with network connectivity|Connection (?:interrupted|reset|refused)|Read timed out")
TENSORRT_MAJOR = 10  # the major onnxruntime-gpu's TensorRT execution provider links

FENCE = re.compile(r"^\s*```[^\n]*\n(.*?)^\s*```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`]+)`")
TARGET = re.compile(r"^(?:\.|clipad)(?:\[([^\]]*)\])?$")
CUDA_SUFFIX = re.compile(r"^(?:nvidia-.+|tensorrt)-cu(\d+)(?:-libs|-bindings)?$")
TENSORRT = re.compile(r"^tensorrt(?:-cu\d+)?(?:-libs|-bindings)?$")
VERSION_IS_CUDA = {"cuda-python", "cuda-bindings", "cuda-toolkit", "nvidia-cuda-runtime"}


class Install(NamedTuple):
    """A documented install of clipad: its extras and the other pip arguments it passes."""

    extras: tuple[str, ...]
    options: tuple[str, ...]
    editable: bool

    def pip_args(self) -> list[str]:
        target = f".[{','.join(self.extras)}]" if self.extras else "."
        return [*self.options, *(["-e"] if self.editable else []), target]


def parse_install(command: str) -> Install | None:
    """The clipad install in one shell command, or None (another package, or no install)."""
    if not (m := re.search(r"(?:^|[\s/])pip3? install (.*)", command)):
        return None
    try:
        args = shlex.split(re.sub(rf"--extra-index-url[ =]{re.escape(NVIDIA_INDEX)}/?(?!\S)", "", m[1]), comments=True)
    except ValueError:
        return None
    extras, options, editable, found = set(), [], False, False
    for arg, after in zip(args, [*args[1:], ""], strict=False):
        if target := TARGET.match(arg):
            found = True
            extras.update(e.strip() for e in (target[1] or "").split(",") if e.strip())
        elif arg in ("-e", "--editable") and TARGET.match(after):
            editable = True
        else:
            options.append(arg)
    return Install(tuple(sorted(extras)), tuple(options), editable) if found else None


def documented_installs(text: str) -> list[Install]:
    """Installs of clipad in fenced blocks and inline code spans; a span holding only a target
    with extras (`".[gpu,dev]"` in prose) counts as ``pip install`` of it."""
    commands = [line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
    for span in SPAN.findall(FENCE.sub("", text)):
        bare = span.strip().strip("\"'")
        bare_target = "[" in bare and TARGET.match(bare)
        commands.append(f"pip install '{bare}'" if bare_target else span.replace("\n", " "))
    parsed = (parse_install(part) for command in commands for part in command.split("&&"))
    return list(dict.fromkeys(p for p in parsed if p))


INSTALLS = list(dict.fromkeys(i for text in DOCS for i in documented_installs(text)))


def requirements(extras: tuple[str, ...], seen: frozenset[str] = frozenset()) -> list[Requirement]:
    """The requirements the extras add, following ``clipad[...]`` self-references."""
    out = []
    for extra in extras:
        for req in map(Requirement, PROJECT["optional-dependencies"][extra]):
            if canonicalize_name(req.name) != "clipad":
                out.append(req)
            elif nested := tuple(sorted(req.extras - seen - {extra})):
                out += requirements(nested, seen | {extra})
    return out


def resolution_problems(installs: list[tuple[str, str]], extras) -> list[str]:
    """What is wrong with a resolved install of clipad with these extras ([] when nothing)."""
    versions = {canonicalize_name(name): version for name, version in installs}
    problems = []
    ort = sorted({"onnxruntime", "onnxruntime-gpu"} & versions.keys())
    if len(ort) != 1:
        problems.append(f"expected exactly one ONNX Runtime wheel, got {ort or 'none'}")
    for name, extra in (("onnxruntime", "cpu"), ("onnxruntime-gpu", "gpu")):
        if (name in versions) != (extra in extras):
            problems.append(f"{name} {'present' if name in versions else 'missing'}, extras {sorted(extras)}")
    majors: dict[int, list[str]] = {}
    for name, version in sorted(versions.items()):
        if m := CUDA_SUFFIX.match(name):
            majors.setdefault(int(m[1]), []).append(f"{name} {version}")
        elif name in VERSION_IS_CUDA:
            majors.setdefault(Version(version).major, []).append(f"{name} {version}")
        if TENSORRT.match(name) and Version(version).major != TENSORRT_MAJOR:
            problems.append(f"{name} {version}: onnxruntime-gpu's TensorRT EP links TensorRT {TENSORRT_MAJOR}")
    if len(majors) > 1:
        problems.append(f"CUDA majors disagree: {majors}")
    if "torch" not in versions or Version(versions["torch"]).public != TORCH:
        problems.append(f"torch must be {TORCH}, got {versions.get('torch', 'none')}")
    return problems


def pip_dry_run(args: list[str], report: Path) -> dict:
    """pip's report of what ``pip install ARGS`` would install.

    ``fast-deps`` reads each wheel's METADATA with HTTP range requests. Without it, pip downloads
    every wheel whole when the index serves no PEP 658 metadata files (this one serves none): the
    gpu extra's CUDA wheels are gigabytes, which filled CI's disk and broke later tests there.
    """
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--use-feature=fast-deps"]
    cmd += ["--report", str(report), *args]
    for _ in range(NETWORK_ATTEMPTS):  # CI's link to the index drops now and then; the resolution does not change
        proc = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
        if proc.returncode == 0 or not NETWORK_FAILURE.search(proc.stderr):
            break
    assert proc.returncode == 0, f"pip failed: {shlex.join(cmd)}\n{proc.stderr[-3000:]}"
    return json.loads(report.read_text())


def tensorrt_constraints(extras: tuple[str, ...], tmp_path: Path) -> Path:
    """A constraints file that keeps NVIDIA's TensorRT wheels out of the resolution.

    On PyPI, ``tensorrt-cuNN`` is a stub sdist that pins ``tensorrt_cuNN_libs==V`` and
    ``tensorrt_cuNN_bindings==V``, and the ``_libs`` stub downloads from NVIDIA's index while pip
    builds its metadata, which fails without that index. So those two pins, and only they, are
    constrained to metadata-only wheels of the same name and version built here. What is not
    resolved here as a result: the dependencies of NVIDIA's real wheels (the libs wheel's
    nvidia-cuda-runtime and the like). Everything else resolves from the index as it would.
    """
    lines = []
    for req in (r for r in requirements(extras) if r.name.startswith("tensorrt")):
        stub = pip_dry_run(["--no-deps", str(req)], tmp_path / "tensorrt.json")["install"][0]["metadata"]
        for pin in map(Requirement, stub.get("requires_dist", [])):
            name = canonicalize_name(pin.name).replace("-", "_")
            exact = [s.version for s in pin.specifier if s.operator == "=="]
            if not (re.fullmatch(r"tensorrt_cu\d+_(libs|bindings)", name) and exact):
                continue
            wheel, info = tmp_path / f"{name}-{exact[0]}-py3-none-any.whl", f"{name}-{exact[0]}.dist-info"
            with zipfile.ZipFile(wheel, "w") as z:
                z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {exact[0]}\n")
                z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
                z.writestr(f"{info}/RECORD", "")
            lines.append(f"{name} @ {wheel.as_uri()}\n")
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("".join(lines))
    return constraints


def test_documented_installs_are_collected():
    ci = re.search(r"<!-- ci-begin -->(.*?)<!-- ci-end -->", README, re.DOTALL)
    assert ci, "README.md lost its <!-- ci-begin --> ... <!-- ci-end --> block"
    assert len(documented_installs(ci[1])) == 1, f"no single clipad install in the CI block:\n{ci[1]}"
    assert any("gpu" in i.extras for i in INSTALLS), f"no documented gpu install among {INSTALLS}"


def test_only_cpu_and_gpu_extras_pull_onnxruntime():
    problems = []
    for extra in [None, *PROJECT["optional-dependencies"]]:
        reqs = requirements((extra,)) if extra else map(Requirement, PROJECT["dependencies"])
        names = {canonicalize_name(r.name) for r in reqs}
        for wheel, owner in (("onnxruntime", "cpu"), ("onnxruntime-gpu", "gpu")):
            if (wheel in names) != (extra == owner):
                problems.append(f"{extra or 'base'}: {wheel} {'pulled' if wheel in names else 'missing'}")
    assert not problems, problems


CLEAN_GPU = [
    ("torch", "2.14.1"), ("onnxruntime-gpu", "1.31.1"), ("tensorrt_cu13", "10.16.1.11"),
    ("tensorrt_cu13_libs", "10.16.1.11"), ("cuda-python", "13.4.4"), ("cuda_bindings", "13.4.4"),
    ("nvidia-cudnn-cu13", "9.24.0.43"), ("nvidia-cuda-runtime", "13.0.96"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("installs", "extras", "flagged"),
    [
        ([*CLEAN_GPU, ("onnxruntime", "1.31.1")], ("cpu", "gpu"), "exactly one ONNX Runtime"),
        ([(n, "12.9.0" if n.startswith("cuda") else v) for n, v in CLEAN_GPU], ("gpu",), "CUDA majors disagree"),
        ([(n, "11.0.0.1" if n.startswith("tensorrt") else v) for n, v in CLEAN_GPU], ("gpu",), "TensorRT 10"),
        ([(n, "2.13.0" if n == "torch" else v) for n, v in CLEAN_GPU], ("gpu",), "torch must be"),
        (CLEAN_GPU, ("cpu",), "onnxruntime missing"),
    ],
    ids=["both-ort-wheels", "cuda-python-12-with-tensorrt-cu13", "tensorrt-11", "torch-2.13", "gpu-wheel-for-cpu"],
)
def test_resolution_problems_flags_bad_stacks(installs, extras, flagged):
    problems = resolution_problems(installs, extras)
    assert any(flagged in p for p in problems), problems


def test_resolution_problems_accepts_a_clean_stack():
    assert resolution_problems(CLEAN_GPU, ("gpu", "dev")) == []
    assert resolution_problems([("torch", "2.14.1"), ("onnxruntime", "1.31.1")], ("cpu",)) == []


@pytest.fixture(scope="module")
def package_index():
    """PyPI must answer; off CI an unreachable index skips rather than fails."""
    if os.environ.get("CI"):
        return
    try:
        urllib.request.urlopen(urllib.request.Request(PYPI, method="HEAD"), timeout=10).close()
    except OSError as e:
        pytest.skip(f"PyPI unreachable ({e}) and CI unset: the dry runs need the package index")


@pytest.fixture(scope="module")
def resolutions(package_index, tmp_path_factory) -> dict[Install, list[tuple[str, str]] | str]:
    """Every documented install dry-run side by side (pip waits on the index most of the time):
    the packages it would install, or pip's failure."""
    from concurrent.futures import ThreadPoolExecutor

    def resolve(install: Install) -> list[tuple[str, str]] | str:
        tmp = tmp_path_factory.mktemp("dry-run")
        try:
            report = pip_dry_run(
                ["-c", str(tensorrt_constraints(install.extras, tmp)), *install.pip_args()], tmp / "report.json"
            )
        except AssertionError as err:
            return str(err)
        return [(i["metadata"]["name"], i["metadata"]["version"]) for i in report["install"]]

    with ThreadPoolExecutor(max_workers=len(INSTALLS)) as pool:
        return dict(zip(INSTALLS, pool.map(resolve, INSTALLS), strict=False))


@pytest.mark.slow
@pytest.mark.parametrize("install", INSTALLS, ids=lambda i: " ".join(i.pip_args()))
def test_documented_install_resolves(install, resolutions):
    installs = resolutions[install]
    assert not isinstance(installs, str), installs
    problems = resolution_problems(installs, install.extras)
    assert not problems, f"pip install {' '.join(install.pip_args())} would install a broken stack: {problems}"
