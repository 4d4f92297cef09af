"""activation in plain PyTorch: the "torch" backend, as the models compute it (each step in the
dtype: ``fc1`` output with its bias, then ``F.gelu``; ``F.silu(gate) * up``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def activation_reference(a: torch.Tensor, b: torch.Tensor | None, kind: str) -> torch.Tensor:
    """a [T, N]: ``gelu(a + b)`` (b [N] or None, exact erf) or ``silu(a) * b`` (b [T, N])."""
    if kind == "gelu":
        return F.gelu(a + b.to(a.dtype) if b is not None else a).contiguous()
    return (F.silu(a) * b).contiguous()
