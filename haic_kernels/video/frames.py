"""Resize and crop of decoded uint8 frames, shared by the CPU decoders.

The model wants 224x224 (or the config's image size): resize the short side to ``size`` with
bilinear interpolation, then center-crop. Frames stay uint8; normalization happens later inside
the patch-embed kernel (MODEL_SPEC.md explains why that commutes with resize and crop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_short_side_center_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> uint8 [N, size, size, 3]; bilinear, half-pixel centers, no AA."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    _n, h, w, _ = frames.shape
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = frames.permute(0, 3, 1, 2).float()
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
