"""Prompt ensembles: state lists x templates -> sentences (method.md section 3.1).

The industrial set is the official one (9 normal and 10 abnormal states, WinCLIP's 22
templates, state-major order). Object names are used verbatim (``metal_nut`` stays as is).
The paper's medical edits (drop "scratch" and "crack", add "hemorrhage" / "tumor" /
"polypus" + "polyp") are not in the official code; they are offered here as named sets.
Custom sets come from a YAML or JSON file with ``normal`` and ``abnormal`` state lists and an
optional ``templates`` list (no other keys), each entry holding exactly one ``{}`` and no other
braces.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from clipad.core.errors import ClipadError

NORMAL_STATES = (
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
    "{} without scratch",
    "{} without crack",
    "{} without contamination",
)
ABNORMAL_STATES = (
    "damaged {}",
    "imperfect {}",
    "blemished {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
    "{} with scratch",
    "{} with crack",
    "{} with contamination",
)
TEMPLATES = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a photo of a {}.",
    "a photo of a large {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a photo of a small {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)


@dataclass(frozen=True)
class PromptSet:
    name: str
    normal: tuple[str, ...]
    abnormal: tuple[str, ...]
    templates: tuple[str, ...] = TEMPLATES

    def sentences(self, object_name: str) -> tuple[list[str], list[str]]:
        """(normal, abnormal) sentences for ``object_name``, state-major: 9*22 and 10*22 for the default set."""

        def expand(states: tuple[str, ...]) -> list[str]:
            return [t.format(s.format(object_name)) for s in states for t in self.templates]

        return expand(self.normal), expand(self.abnormal)


def _medical(name: str, *words: str) -> PromptSet:
    keep_n = tuple(s for s in NORMAL_STATES if "scratch" not in s and "crack" not in s)
    keep_a = tuple(s for s in ABNORMAL_STATES if "scratch" not in s and "crack" not in s)
    return PromptSet(
        name,
        keep_n + tuple(f"{{}} without {w}" for w in words),
        keep_a + tuple(f"{{}} with {w}" for w in words),
    )


PROMPT_SETS = {
    "industrial": PromptSet("industrial", NORMAL_STATES, ABNORMAL_STATES),
    "hemorrhage": _medical("hemorrhage", "hemorrhage"),
    "tumor": _medical("tumor", "tumor"),
    "polyp": _medical("polyp", "polypus", "polyp"),
}


FILE_KEYS = ("normal", "abnormal", "templates")  # a prompt file's keys; templates optional


def _one_placeholder(entry: str) -> bool:
    """Whether ``str.format`` sees exactly one field in ``entry`` and it is a bare ``{}``
    (``{x}``, ``{0}`` or ``{:>3}`` would fail or misplace the word when the sentences are made)."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(entry) if name is not None]
    except ValueError:  # an unmatched brace
        return False
    return fields == [("", "", None)]


def _check_entries(entries: object, key: str, source: str) -> tuple[str, ...]:
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries):
        raise ClipadError(f"prompt file {source}: '{key}' must be a non-empty list of strings")
    bad = [e for e in entries if not _one_placeholder(e)]
    if bad:
        raise ClipadError(
            f"prompt file {source}: '{key}' entry {bad[0]!r} must contain exactly one {{}} and no other braces"
        )
    return tuple(entries)


def load_prompt_set(name_or_path: str) -> PromptSet:
    """A named set (industrial, hemorrhage, tumor, polyp) or a YAML/JSON file."""
    if name_or_path in PROMPT_SETS:
        return PROMPT_SETS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise ClipadError(
            f"unknown prompt set '{name_or_path}' (named sets: {', '.join(PROMPT_SETS)}; or a .yaml/.json file)"
        )
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ClipadError(f"cannot read prompt file {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ClipadError(f"prompt file {path} must map 'normal', 'abnormal' (and optionally 'templates') to lists")
    unknown = [str(k) for k in data if k not in FILE_KEYS]
    if unknown:
        raise ClipadError(
            f"prompt file {path}: unknown key '{unknown[0]}' (allowed: {', '.join(FILE_KEYS)}; templates optional)"
        )
    templates = _check_entries(data["templates"], "templates", str(path)) if "templates" in data else TEMPLATES
    return PromptSet(
        path.stem,
        _check_entries(data.get("normal"), "normal", str(path)),
        _check_entries(data.get("abnormal"), "abnormal", str(path)),
        templates,
    )
