"""The CLIP-AD reference model: weight loading, the dual-path ViT (``surgery``), SDP/SDP+ maps
(``sdp``, ``maps``, ``heads``), text prompts and RVS (``prompts``, ``rvs``), the image-score
fusion (``fusion``), the normal-reference memory and map (``reference``) and the analytic FLOP
count (``flops``). Importing this package imports nothing; ``fusion`` is numpy-only, so serving
can use it without torch."""
