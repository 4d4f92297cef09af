"""The patch-embed weight as the fast backends read it (shared by triton.py and cuda.py)."""

from __future__ import annotations

import torch


def weight_kd(weight: torch.Tensor, k_multiple: int) -> torch.Tensor:
    """[D, 3, p, p] -> contiguous [K_pad, D]: K = 3*p*p in (c, kh, kw) order, zero rows past K,
    K_pad = K rounded up to ``k_multiple``."""
    d = weight.shape[0]
    k = weight.shape[1] * weight.shape[2] * weight.shape[3]
    k_pad = -(-k // k_multiple) * k_multiple
    out = weight.new_zeros((k_pad, d))
    out[:k] = weight.reshape(d, k).t()
    return out
