"""Every option of every command, given a value no command can use: exit non-zero, one line on stderr that
names the option, no traceback, no file touched. The options come from the Typer app itself, so a new
option is covered the day it is added; the bad values come from a table per option type."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import typer.main

from clipad import cli

# Numbers that no option takes: negative, beyond float range, not a number, empty, not numeric.
BAD_NUMBERS = ("-1", "1e309", "nan", "inf", "", "x")
# Numeric options where 0 is a documented value (a free port, "never", "all", no warm-up); all others need > 0.
ZERO_OK = {"seed", "train_seed", "http_port", "grpc_port", "metrics_port", "warmup", "snapshot_interval",
           "events_max_mb", "segment_minutes", "snapshots_max_mb", "snapshots_max_age_h", "segments_max_mb",
           "segments_max_age_h", "max_auroc_drop", "min_agreement"}  # fmt: skip
# Paths no command can read or write: under /proc even root cannot create a file.
BAD_PATHS = ("/proc/x", "/proc/x/y", "a_file/below")
# A missing parent folder is bad for what a command reads; the writers create it for what they write.
MISSING_PARENT = "missing/parent/x"
OUTPUTS = {"out", "json", "plot", "log", "triton_repo"}
SKIPPED_COMMANDS = {"run"}  # the runtime's own tests cover `clipad run` (it streams until stopped)


def _commands():
    group = typer.main.get_command(cli.app)
    for name, command in group.commands.items():
        for sub, cmd in getattr(command, "commands", {name: command}).items():
            path = (name,) if sub == name else (name, sub)
            if name not in SKIPPED_COMMANDS:
                yield path, cmd


def _cases():
    for path, cmd in _commands():
        for param in cmd.params:
            if getattr(param, "is_flag", False) or getattr(param, "hidden", False) or not param.opts[0].startswith("-"):
                continue
            kind = param.bare_type()  # the annotation without Optional: int, float, Path, str, list[...]
            kind = getattr(kind, "__name__", str(kind))  # a class, or its name (cli.py's annotations are strings)
            if kind in ("int", "float"):
                values = BAD_NUMBERS + (() if param.name in ZERO_OK else ("0",))
            elif kind == "Path":
                values = BAD_PATHS + (() if param.name in OUTPUTS else (MISSING_PARENT,))
            else:
                values = ("",)
            for value in values:
                yield pytest.param(path, param.opts[0], value, id=f"{' '.join(path)} {param.opts[0]}={value!r}")


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes() if p.is_file() else b"/")
    return h.hexdigest()


@pytest.mark.parametrize("command, flag, value", list(_cases()))
def test_bad_option_value_is_one_line(command, flag, value, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    before = _tree_hash(tmp_path)
    code = cli.run([*command, flag, value])
    out, err = capfd.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0, out + err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert flag in lines[0] or (value and value in lines[0]), lines[0]
    assert _tree_hash(tmp_path) == before
