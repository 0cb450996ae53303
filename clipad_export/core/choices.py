"""The closed sets of choices that cross module boundaries, as ``Literal`` types with their values.

Defined here, below everything and without torch, so that the reference (``clipad.model``), the
manifest (``clipad.deploy.manifest``), calibration, the runtime and the CLI name them once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, TypeVar, get_args

from clipad.core.errors import ClipadError

Mode = Literal[
    "sdp", "sdp+", "reference"
]  # SDP (zero-shot), SDP+ (with the four trained heads), reference (good images only, method.md 14)
MODES: tuple[str, ...] = get_args(Mode)

Precision = Literal["fp32", "fp16", "int8"]  # of a graph, an engine or a served backend
PRECISIONS: tuple[str, ...] = get_args(Precision)

Attention = Literal[
    "fused", "explicit"
]  # the torch path's attention: scaled_dot_product_attention, or MatMul + Softmax
ATTENTIONS: tuple[str, ...] = get_args(Attention)

RvsMethod = Literal["mean", "pca", "kde", "dbscan", "mean_shift"]  # method.md section 3.3
RVS_METHODS: tuple[str, ...] = get_args(RvsMethod)


class RvsProfile(StrEnum):
    """Whose DBSCAN parameters the RVS uses (method.md section 3.3): VisA's (eps 1.5, min_samples
    25) or MVTec AD's (eps 0.5, 15)."""

    MVTEC = "mvtec"
    VISA = "visa"


E = TypeVar("E", bound=StrEnum)


def parse_choice(kind: type[E], value: str, option: str) -> E:
    """``value`` as a member of ``kind``, or a one-line ClipadError naming ``option`` and the
    allowed words."""
    try:
        return kind(value)
    except ValueError:
        raise ClipadError(f"{option} must be one of {', '.join(kind)}, got '{value}'") from None


def check_method(mode: str, has_heads: bool, rvs: str) -> None:
    """One-line errors for a method choice that cannot work: an unknown mode or RVS method, SDP+
    without heads, heads without SDP+."""
    if mode not in MODES:
        raise ClipadError(f"--mode must be {' or '.join(MODES)}, got '{mode}'")
    if mode == "sdp+" and not has_heads:
        raise ClipadError("--mode sdp+ needs --heads FILE")
    if mode in ("sdp", "reference") and has_heads:
        raise ClipadError("--heads is only used with --mode sdp+")
    if rvs not in RVS_METHODS:
        raise ClipadError(f"--rvs must be one of {', '.join(RVS_METHODS)}, got '{rvs}'")
