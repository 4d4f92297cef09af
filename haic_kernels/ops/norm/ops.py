"""The ``haic_kernels::row_norm`` custom op: its dispatch table and fake kernel.

Arguments arrive checked by api.py (x, residual 2-D [T, D]), with the backend resolved. The
Triton backend allocates its outputs through ``_common.new_output``.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import Dispatch, new_output

__all__ = ["DISPATCH", "row_norm_op"]


def _torch(x, residual, weight, bias, eps, kind, mode):
    from haic_kernels.ops.norm.reference import row_norm_reference

    return row_norm_reference(x, residual, weight, bias, eps, kind, mode)


def _triton(x, residual, weight, bias, eps, kind, mode):
    from haic_kernels.ops.norm.triton import row_norm_triton

    outs = [new_output(tuple(x.shape), x.dtype, x.device) for _ in range(1 + (mode == "pre"))]
    row_norm_triton(x, residual, weight, bias, outs, eps, kind, mode)
    return outs


def _liger(x, residual, weight, bias, eps, kind, mode):
    from haic_kernels.ops.norm.liger import rms_norm_liger

    return rms_norm_liger(x, residual, weight, eps)


# "liger" (Liger-Kernel's fused RMSNorm, optional) is never chosen by auto: ours is the same
# kernel shape with the model's rounding of the residual and one launch for both variants.
DISPATCH = Dispatch("norm", {"torch": _torch, "triton": _triton, "liger": _liger},
                    auto_order=("triton",))  # fmt: skip


@torch.library.custom_op("haic_kernels::row_norm", mutates_args=())
def row_norm_op(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    eps: float,
    kind: str,
    mode: str,
    backend: str,
) -> list[torch.Tensor]:
    """The op behind the four functions: x [T, D] -> [y] or, mode "pre", [y, x + residual]."""
    return DISPATCH.run(backend, x, residual, weight, bias, eps, kind, mode)


@row_norm_op.register_fake
def _row_norm_fake(x, residual, weight, bias, eps, kind, mode, backend):
    return [torch.empty_like(x, memory_format=torch.contiguous_format)
            for _ in range(1 + (mode == "pre"))]  # fmt: skip
