"""norm through Liger-Kernel (optional): ``backend="liger"`` for rms_norm and add_rms_norm.

Liger's "gemma" casting mode computes everything in fp32 and rounds once, multiplying
``(x * rstd) * w`` in fp32: the same formula as CogVLM2's RMSNorm (its "llama" mode rounds before
the weight multiply, which is Hugging Face Llama's numerics, not this model's). Its fused add
rounds ``x + residual`` to the dtype first, as the model does. CUDA only (see
`haic_kernels.backends.liger`); imported lazily by api.py.
"""

from __future__ import annotations

import torch

# Liger's casting mode with the model's numerics (see the module docstring).
_CASTING = "gemma"


def rms_norm_liger(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> list[torch.Tensor]:
    """x [T, D] (+ residual) -> [y] or [y, x + residual], through Liger's forward kernels."""
    if residual is None:
        from liger_kernel.ops.rms_norm import LigerRMSNormFunction

        return [LigerRMSNormFunction.apply(x, weight, eps, 0.0, _CASTING)]
    from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction

    y, h = LigerFusedAddRMSNormFunction.apply(x, residual, weight, eps, 0.0, _CASTING)
    return [y, h]
