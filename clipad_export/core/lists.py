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
