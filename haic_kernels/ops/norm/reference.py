"""norm in plain PyTorch: the "torch" backend, written as the models compute it.

RMSNorm as CogVLM2's LM (fp32 math, the weight multiplied in fp32, one rounding), LayerNorm as
``nn.LayerNorm`` (fp32 statistics inside, rounded to the dtype), residual adds in the dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def row_norm_reference(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    kind: str,
    mode: str,
) -> list[torch.Tensor]:
    """x [T, D] -> [y] or, mode "pre", [y, h] (see `haic_kernels.ops.norm.api`)."""
    h = x + residual if mode == "pre" else x
    if kind == "rms":
        f = h.to(torch.float32)
        f = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + eps)
        y = (weight.to(torch.float32) * f).to(x.dtype)
    else:
        w = weight.to(x.dtype)
        b = bias.to(x.dtype) if bias is not None else None
        y = F.layer_norm(h, (h.shape[-1],), w, b, eps)
    if mode == "post":
        return [residual + y]
    if mode == "pre":
        return [y, h.clone(memory_format=torch.contiguous_format)]
    return [y.contiguous()]
