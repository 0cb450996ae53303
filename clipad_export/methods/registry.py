"""The registered methods by name: ``METHODS`` (one line per method) and ``get_method``.

The names are ``clipad.core.choices.Method``'s words (the ``--method`` choices, the manifest's
``mode``); tests/test_methods.py checks that both list the same methods.
"""

from __future__ import annotations

from clipad.core.choices import parse_choice
from clipad.methods import anomalydino, reference, sdp, sdp_plus
from clipad.methods.base import Method

METHODS: dict[str, Method] = {m.name: m for m in (sdp.METHOD, sdp_plus.METHOD, reference.METHOD, anomalydino.METHOD)}


def get_method(name: str, option: str = "--method") -> Method:
    """The method registered as ``name``, or a one-line ClipadError naming ``option`` and the
    registered names."""
    return METHODS[parse_choice(tuple(METHODS), name, option)]
