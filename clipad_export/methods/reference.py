"""The normal-reference mode: the map is the nearest-neighbour distance of the patch tokens to a
memory of good images' patch tokens, alone (method.md section 14; docs/reference-mode.md).

No text path: the exported graph holds the ViT's original path and the memory; image_prob is
the map maximum through the score constants baked at export. Needs good images (export
``--reference``, eval ``--shots``), and evaluates under the few-shot protocol only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipad.methods.base import EvalProtocol, Method

if TYPE_CHECKING:
    from clipad.model.flops import ViTDims


class Reference(Method):
    name = "reference"
    summary = "good images only (--reference, --shots)"
    text_path = False
    needs_reference = True
    eval_protocol = EvalProtocol.FEW_SHOT

    def flops(self, dims: ViTDims, memory_patches: int = 0) -> dict[str, int]:
        """No V-V path, projection or feature surgery: they drop out of the exported graph (the
        PyTorch module still runs the V-V path, as DualPathViT always does)."""
        from clipad.model.flops import reference_flops, sdp_parts, with_total

        parts = sdp_parts(dims)
        parts.update(vv_path=0, projection=0, feature_surgery=0, upsample_blur=0)
        parts["reference"] = reference_flops(dims, memory_patches)
        return with_total(parts)


METHOD = Reference()
