"""Installed distributions, read from their metadata without importing them."""

from __future__ import annotations

import importlib.metadata


def installed_version(*dists: str) -> str | None:
    """The installed version of the first of ``dists`` (distribution names) that is installed."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
