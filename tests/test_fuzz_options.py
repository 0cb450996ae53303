"""Every option of every offline command, given a value it cannot use, beside otherwise valid
arguments: exit non-zero, one line on stderr, no traceback, no file touched.

The options come from the Typer app itself, so an option added later is covered the day it is
added; the bad values come from a table per option type. Each command gets the arguments that
make it run (the tiny model's export, the synthetic set, a fresh output path), so a bad value
that is not refused shows as a command that did its work (exit 0, files written) and fails here.
`clipad run` streams until stopped: its options are covered by its own tests (tests/test_runtime*.py);
`clipad station`'s base replays one image on a calibrated copy of the export.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import typer.main

from clipad import cli
from tests.helpers import TINY

# Values no option takes: out of bounds, not a number, infinite, empty, of another type; "0" is
# added where zero is not a documented value.
BAD_INTS = ("-1", "x", "")
BAD_FLOATS = ("-1", "nan", "inf", "x", "")
ZERO_OK = {
    "seed",
    "train_seed",
    "n_train",
    "http_port",
    "grpc_port",
    "metrics_port",
    "warmup",
    "sigma",
    "max_auroc_drop",
    "min_agreement",
}
# Paths no command can read or write (even root cannot create a file under /proc), and a path
# below a file. What a command reads may also not be missing.
BAD_PATHS = ("/proc/clipad/x", "a_file/below", "")
OUTPUTS = {"out", "json", "plot", "log", "triton_repo", "cache_dir", "events", "spool", "trace"}
# Text options where any non-empty text is a valid name or label.
FREE_TEXT = {"object_name", "category"}
SKIPPED_COMMANDS = {"run"}


def _commands():
    group = typer.main.get_command(cli.app)
    for name, command in group.commands.items():
        for sub, cmd in getattr(command, "commands", {name: command}).items():
            path = (name,) if sub == name else (name, sub)
            if name not in SKIPPED_COMMANDS:
                yield path, cmd


def _bad_values(param) -> tuple[str, ...]:
    kind = param.bare_type() if hasattr(param, "bare_type") else param.type
    kind = getattr(kind, "__name__", str(kind))
    if kind == "int":
        return BAD_INTS + (() if param.name in ZERO_OK else ("0",))
    if kind == "float":
        return BAD_FLOATS + (() if param.name in ZERO_OK else ("0",))
    if kind == "Path":
        return BAD_PATHS + (() if param.name in OUTPUTS else ("missing/x",))
    return ("",) if param.name in FREE_TEXT else ("bogus,", "")


def _cases():
    for path, cmd in _commands():
        for param in cmd.params:
            if getattr(param, "is_flag", False) or not param.opts or not param.opts[0].startswith("-"):
                continue
            for value in _bad_values(param):
                yield pytest.param(path, param.opts[0], value, id=f"{' '.join(path)} {param.opts[0]}={value}")


@pytest.fixture(scope="module")
def recipe(art, synth_root, tmp_path_factory) -> Path:
    """A calibrated copy of the tiny export, and beside it a folder of one image to replay."""
    import shutil

    root = tmp_path_factory.mktemp("recipe")
    shutil.copytree(art.root, root / "a")
    good = str(synth_root / "washer" / "test" / "good")
    assert (
        cli.run(["calibrate", "--artifacts", str(root / "a"), "--good", good, "--backend", "onnxruntime", "--quiet"])
        == 0
    )
    (root / "one").mkdir()
    shutil.copy(next((synth_root / "washer" / "test" / "good").iterdir()), root / "one")
    return root


@pytest.fixture(scope="module")
def bases(art, synth_root, recipe) -> dict[tuple[str, ...], list[str]]:
    """Arguments with which each command does its work (checked below: exit 0)."""
    good = synth_root / "washer" / "test" / "good"
    data = ["--dataset", "mvtec", "--root", str(synth_root), "--categories", "washer"]
    return {
        ("synth",): ["--out", "new", "--n-train", "1", "--n-good", "1", "--n-defect", "1"],
        ("eval",): [*data, "--out", "new", *TINY],
        ("export",): ["--category", "bottle", "--precision", "fp32", "--out", "new", *TINY],
        ("parity",): ["--artifacts", str(art.root), "--images", str(good), "--backends", "onnxruntime"],
        ("predict",): [str(good), "--artifacts", str(art.root), "--out", "new"],
        ("calibrate",): ["--artifacts", str(art.root), "--good", str(good)],
        ("bench",): ["--artifacts", str(art.root), "--backends", "onnxruntime", "--iterations", "1", "--warmup", "0"],
        ("triton-server",): ["--repo", "repo"],
        ("demo",): ["--out", "new", "--frames", "2"],
        ("train",): [*data, "--out", "new", "--epochs", "1", *TINY],
        ("doctor",): [],
        ("reference", "add"): [str(good), "--artifacts", "art_copy"],
        ("station",): ["--recipe", f"a={recipe / 'a'}", "--replay", str(recipe / "one"), "--backend", "onnxruntime"],
    }


def _tree_hash(*roots: Path) -> str:
    h = hashlib.sha256()
    for root in roots:
        for p in sorted(root.rglob("*")):
            h.update(str(p).encode())
            h.update(p.read_bytes() if p.is_file() else b"/")
    return h.hexdigest()


@pytest.fixture
def workdir(tmp_path, monkeypatch, art):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "repo").mkdir()  # an empty model repository: triton-server's base fails only for it
    os.symlink(art.root, tmp_path / "art_link")
    return tmp_path


def test_every_command_has_a_base(bases):
    assert {path for path, _ in _commands()} == set(bases)


@pytest.mark.parametrize("command, flag, value", list(_cases()))
def test_bad_option_value_is_one_line(command, flag, value, bases, workdir, art, synth_root, recipe, capfd):
    args = [*command, *bases[command]]
    if command == ("reference", "add"):  # it writes into the artifacts: a copy of its own
        import shutil

        shutil.copytree(art.root, workdir / "art_copy")
    if flag in args:  # the base's value is replaced by the bad one
        i = args.index(flag)
        del args[i : i + 2]
    before = _tree_hash(workdir, art.root, synth_root, recipe)
    code = cli.run([*args, flag, value])
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0, f"exit 0: {out}{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert flag in lines[0] or (value and value in lines[0]), f"the error does not name {flag}: {lines[0]}"
    assert _tree_hash(workdir, art.root, synth_root, recipe) == before, "files changed"
