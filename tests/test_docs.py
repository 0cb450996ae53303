"""The docs cite what exists: README.md stays short, every repository path they name is on disk,
and every `clipad` command they show in a code block is a real command with real options.

Checked files: README.md and docs/*.md. Paths are read from inline code spans (relative to the
repository root), markdown links (relative to the file that holds them) and fenced blocks;
commands from the lines of fenced blocks that start with ``clipad``, ``.venv/bin/clipad`` or
``python -m clipad``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from clipad.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 12288
# What CI runs (.ci/run executes the block verbatim) and the GPU workstation's one command;
# tests/test_install.py dry-runs both.
CI_BEGIN, CI_END = "<!-- ci-begin -->", "<!-- ci-end -->"
GPU_INSTALL = 'python3 -m venv .venv && .venv/bin/pip install --extra-index-url https://pypi.nvidia.com -e ".[gpu]"'

FENCE = re.compile(r"^\s*```[^\n]*\n(.*?)^\s*```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
REPO_DIRS = ("clipad_export/", "runtime/", "calibration/", "tests/", "scripts/", "docs/", ".ci/")
REPO_FILES = ("cli.py", "pyproject.toml", "LICENSE", "README.md")
# clipad/<x> is an import path; on disk the package is assembled from these folders (pyproject.toml's package-dir)
ON_DISK = (("clipad/runtime/", "runtime/"), ("clipad/calibration/", "calibration/"), ("clipad/cli.py", "cli.py"))
LINE_SUFFIX = re.compile(r":\d+(?:-\d+)?$")
EDGE = "\"'()[]{}<>,;"
COMMAND_LINE = re.compile(r"^\s*(?:\$\s+)?(?:\.venv/bin/clipad|clipad|(?:\.venv/bin/)?python3? -m clipad)\s+(.*)$")
SHELL_BREAKS = {"&&", "||", ";", ">", ">>", "2>&1", "2>"}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def exists(path: Path, pattern: str) -> bool:
    """A file or folder at ``path``, or (for a glob) at least one match."""
    if any(c in pattern for c in "*?["):
        return next(path.parent.glob(path.name), None) is not None if path.parent.exists() else False
    return path.exists()


def on_disk(import_path: str) -> str:
    for prefix, folder in ON_DISK:
        if import_path.startswith(prefix):
            return folder + import_path[len(prefix) :]
    return "clipad_export/" + import_path[len("clipad/") :]


def cited_paths(text: str) -> list[str]:
    """Repository paths named in code spans and fenced blocks (relative to the repository root)."""
    fenced = FENCE.findall(text)
    tokens = [t for span in SPAN.findall(FENCE.sub("", text)) for t in span.split()]
    tokens += [t for block in fenced for t in block.split()]
    out = []
    for token in tokens:
        token = LINE_SUFFIX.sub("", token.strip(EDGE))
        if token.startswith((*REPO_DIRS, "clipad/")) or token in REPO_FILES:
            out.append(token)
    return list(dict.fromkeys(out))


def path_problems(doc: Path) -> list[tuple[str, str]]:
    """(path, why) for each path ``doc`` cites that is not on disk."""
    text = doc.read_text()
    problems = []
    for path in cited_paths(text):
        if path.startswith("clipad/"):
            problems.append((path, f"import path, not a repository path: write `{on_disk(path)}`"))
        elif not exists(ROOT / path, path):
            problems.append((path, "no such file or folder"))
    for target in LINK.findall(FENCE.sub("", text)):
        target = target.split("#")[0]
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):  # anchors, http(s), mailto
            continue
        if target.startswith("clipad/") or "/clipad/" in target:
            problems.append((target, "link to an import path, not a repository path"))
        elif not exists(doc.parent / target, target):
            problems.append((target, f"link target missing (relative to {rel(doc.parent) or '.'}/)"))
    return problems


def command_lines(text: str) -> list[str]:
    """The `clipad ...` command lines of the fenced blocks (continuation lines joined)."""
    lines = [line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
    return [m[1] for line in lines if (m := COMMAND_LINE.match(line))]


def options_of(command) -> set[str]:
    return {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("-")} | {"--help"}


def command_problems(args: str, root=None) -> list[str]:
    """What in one `clipad` command line names no real command or option ([] when nothing)."""
    root = root or typer.main.get_command(app)
    try:
        tokens = shlex.split(args, comments=True)
    except ValueError as err:
        return [f"cannot parse ({err})"]
    command, problems = root, []
    for raw in tokens:
        if raw in SHELL_BREAKS:
            break
        token = raw.strip("[](){}")
        if not token or token == "|":
            continue
        if token.startswith("--"):
            name = token.split("=", 1)[0]
            if name not in options_of(command):
                problems.append(f"`{command.name}` has no option {name}")
        elif hasattr(command, "commands") and not token.startswith("-"):
            sub = command.commands.get(token)
            if sub is None:
                problems.append(f"no command `{token}` (under `{command.name}`: {', '.join(sorted(command.commands))})")
                break
            command = sub
    return problems


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, at most {README_MAX_BYTES}: move detail to docs/"


def test_readme_keeps_the_ci_block_and_the_gpu_install():
    text = README.read_text()
    begin, end = text.find(CI_BEGIN), text.find(CI_END)
    assert 0 <= begin < end, f"README.md lost its {CI_BEGIN} ... {CI_END} block (.ci/run executes it)"
    assert "pip install" in text[begin:end], "the CI block installs nothing"
    assert GPU_INSTALL in text, f"README.md lost the GPU workstation install: {GPU_INSTALL}"


def test_cited_paths_exist():
    unknown = [f"{rel(doc)}: `{path}`: {why}" for doc in DOCS for path, why in path_problems(doc)]
    assert not unknown, "paths cited in the docs that are not in the repository:\n" + "\n".join(unknown)


def test_documented_commands_exist():
    problems = [
        f"{rel(doc)}: clipad {args}\n    {why}" for doc in DOCS for args in command_lines(doc.read_text())
        for why in command_problems(args)
    ]  # fmt: skip
    assert not problems, "documented commands the CLI does not have:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("args", "flagged"),
    [
        ("export --category x --no-such-option 1", "has no option --no-such-option"),
        ("exprot --category x", "no command `exprot`"),
        ("reference add --artifacts a --shots 2", "`add` has no option --shots"),
        ("--debug run --camera 0 [--save x.mp4] --bogus", "`run` has no option --bogus"),
    ],
)
def test_command_check_flags_mistakes(args, flagged):
    assert any(flagged in p for p in command_problems(args)), command_problems(args)


def test_command_check_accepts_real_commands():
    ok = "--debug calibrate --artifacts a --good g/ [--anomalous 'b/*.png' --masks m/] # comment --bogus"
    assert command_problems(ok) == []
    assert command_problems("reference add --artifacts a imgs/ && ls --bogus") == []


def test_path_check_flags_import_paths_and_missing_files():
    assert cited_paths("see `clipad/model/sdp.py` and `runtime/run.py:12`, `tests/test_*.py`") == [
        "clipad/model/sdp.py",
        "runtime/run.py",
        "tests/test_*.py",
    ]
    assert on_disk("clipad/runtime/run.py") == "runtime/run.py"
    assert on_disk("clipad/deploy/export.py") == "clipad_export/deploy/export.py"
    assert exists(ROOT / "tests/test_*.py", "tests/test_*.py")
    assert not exists(ROOT / "tests/nothing_*.py", "tests/nothing_*.py")
