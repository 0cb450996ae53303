"""SDP: zero-shot CLIP-AD, the staged dual-path ViT with feature surgery (method.md sections 4-6).

The model is ``clipad.model.sdp.SDPModel`` without heads; its image score fuses image_prob with
the map maximum (section 6). With good images (export --reference, eval --shots) the reference
map is added to its map (section 14).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipad.methods.base import Method

if TYPE_CHECKING:
    from clipad.model.flops import ViTDims


class Sdp(Method):
    name = "sdp"
    summary = "zero-shot"

    def flops(self, dims: ViTDims, memory_patches: int = 0) -> dict[str, int]:
        from clipad.model.flops import reference_flops, sdp_parts, with_total

        parts = sdp_parts(dims)
        if memory_patches:
            parts["reference"] = reference_flops(dims, memory_patches)
        return with_total(parts)


METHOD = Sdp()
