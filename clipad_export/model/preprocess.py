"""Pixel normalisation inside the model (and so inside the exported graph).

Everything outside the model handles uint8 RGB at model resolution (``clipad.data.images``);
division by 255 and the mean/std normalisation happen here, as the first ops of the graph
(method.md section 2).
"""

from __future__ import annotations

import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(
    images: torch.Tensor, mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD
) -> torch.Tensor:
    """uint8 RGB [B, H, W, 3] -> float32 [B, 3, H, W], divided by 255 and mean/std normalised.

    Written with plain tensor ops so it traces into the exported graph.
    """
    x = images.to(torch.float32).permute(0, 3, 1, 2) / 255.0  # cast first: TensorRT takes uint8 only into a Cast
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    return (x - m) / s
