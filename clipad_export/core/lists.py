"""Comma-separated option values (``--backends torch,onnxruntime``, ``--batch 1,8``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def comma_list(value: str, what: str, cast: Callable[[str], Any] = str) -> list:
    """'a,b' -> [cast(a), cast(b)] (blanks dropped); a one-line error for a value that does not convert
    or names nothing (``,``: an empty list would make the command do nothing and succeed)."""
    from clipad.core.errors import ClipadError

    try:
        values = [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ClipadError(f"{what} takes comma-separated values, got '{value}'") from None
    if not values:
        raise ClipadError(f"{what} needs at least one value, got '{value}'")
    return values


def empty_values(argv: list[str]) -> None:
    """A one-line error for an empty argument (``--out ""``, ``--out=``): no clipad option or
    argument takes one, and a path option would read it as the current folder."""
    from clipad.core.errors import ClipadError

    for before, arg in zip(["", *argv], argv, strict=False):
        if arg == "" or (arg.startswith("--") and arg.endswith("=")):
            named = arg.rstrip("=") if arg else before if before.startswith("-") else "an argument"
            raise ClipadError(f"{named} is empty: give it a value")
