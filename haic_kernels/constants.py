"""Numbers shared by the model, the kernels and the video loader (from the CogVLM2 release)."""

from __future__ import annotations

# CLIP normalization used by EVA2-CLIP preprocessing: x = (pixel / 255 - mean[c]) / std[c].
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Token types in token_type_ids.
LANGUAGE_TOKEN_TYPE = 0
VISION_TOKEN_TYPE = 1
