"""silu_mul through Liger-Kernel (optional): ``backend="liger"``. Liger rounds ``silu(gate)`` to
the dtype before the multiply (as eager PyTorch does); its launcher makes gate and up contiguous,
so the fused ``[gate | up]`` form costs two copies there. CUDA only; imported lazily."""

from __future__ import annotations

import torch


def silu_mul_liger(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gate, up [T, N] -> ``silu(gate) * up`` [T, N] through Liger's SiLU*mul kernel."""
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction

    return LigerSiLUMulFunction.apply(gate, up)
