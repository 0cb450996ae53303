"""SDP+: SDP plus four trained linear heads on the raw taps' patch tokens (method.md section 7).

Needs ``--heads FILE`` (`clipad train`); its map adds the heads' maps before the one blur, and on
VisA its default smoothing sigma is 2 (section 7.2, 10 item 8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipad.methods.base import Method

if TYPE_CHECKING:
    from clipad.model.flops import ViTDims


class SdpPlus(Method):
    name = "sdp+"
    summary = "SDP with the trained heads (--heads)"
    takes_heads = True

    def default_sigma(self, dataset: str) -> float:
        """2 on VisA, 8 elsewhere: only the fused SDP+ map has a VisA value (method.md 7.2, 10 item 8;
        training's validation smooths with its validation set's sigma, section 7.3)."""
        from clipad.model.sdp import DEFAULT_SIGMA, VISA_SDP_PLUS_SIGMA

        return VISA_SDP_PLUS_SIGMA if dataset == "visa" else DEFAULT_SIGMA

    def flops(self, dims: ViTDims, memory_patches: int = 0) -> dict[str, int]:
        from clipad.model.flops import heads_flops, heads_upsample_blur_flops, reference_flops, sdp_parts, with_total

        parts = sdp_parts(dims)
        parts.update(heads=heads_flops(dims), upsample_blur=heads_upsample_blur_flops(dims))
        if memory_patches:
            parts["reference"] = reference_flops(dims, memory_patches)
        return with_total(parts)


METHOD = SdpPlus()
