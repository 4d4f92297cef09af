"""The ``haic_kernels::activation`` custom op: its dispatch table and fake kernel.

Arguments arrive checked by api.py (a [T, N]; b a bias [N], up [T, N] or None), with the backend
resolved. The Triton backend allocates its output through ``_common.new_output``.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import Dispatch, new_output

__all__ = ["DISPATCH", "activation_op"]


def _torch(a, b, kind):
    from haic_kernels.ops.activation.reference import activation_reference

    return activation_reference(a, b, kind)


def _triton(a, b, kind):
    from haic_kernels.ops.activation.triton import activation_triton

    out = new_output(tuple(a.shape), a.dtype, a.device)
    activation_triton(a, b, out, kind)
    return out


def _liger(a, b, kind):
    from haic_kernels.ops.activation.liger import silu_mul_liger

    return silu_mul_liger(a, b)


# "liger" (optional) is never chosen by auto (see README "Build or depend").
DISPATCH = Dispatch("activation", {"torch": _torch, "triton": _triton, "liger": _liger},
                    auto_order=("triton",))  # fmt: skip


@torch.library.custom_op("haic_kernels::activation", mutates_args=())
def activation_op(a: torch.Tensor, b: torch.Tensor | None, kind: str, backend: str) -> torch.Tensor:
    """a [T, N] -> [T, N]: ``gelu(a + b)`` (b a bias [N] or None) or ``silu(a) * b`` (b [T, N])."""
    return DISPATCH.run(backend, a, b, kind)


@activation_op.register_fake
def _activation_fake(a, b, kind, backend):
    return a.new_empty(a.shape)
