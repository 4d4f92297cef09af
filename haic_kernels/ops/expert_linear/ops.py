"""The ``haic_kernels::expert_linear`` custom op: its dispatch table and fake kernel.

Arguments arrive checked by api.py (x 2-D with unit last stride, biases contiguous), with the
backend resolved; ``perm`` and ``offsets`` come from a validated `Routing`.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import Dispatch, new_output

__all__ = ["DISPATCH", "expert_linear_op"]


def _torch(x, weights, biases, perm, offsets):
    from haic_kernels.ops.expert_linear.reference import expert_linear_reference

    return expert_linear_reference(x, weights, biases, perm, offsets)


def _triton(x, weights, biases, perm, offsets):
    if x.shape[1] == 0:  # no K: the output is the bias, no GEMM to run
        return _torch(x, weights, biases, perm, offsets)
    from haic_kernels.ops.expert_linear.triton import expert_linear_triton

    out = new_output((x.shape[0], weights[0].shape[0]), x.dtype, x.device)
    expert_linear_triton(x, weights, biases, perm, offsets, out)
    return out


DISPATCH = Dispatch("expert_linear", {"torch": _torch, "triton": _triton}, auto_order=("triton",))


@torch.library.custom_op("haic_kernels::expert_linear", mutates_args=())
def expert_linear_op(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    perm: torch.Tensor,
    offsets: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    """The op behind `expert_linear` (arguments checked, x 2-D, ``backend`` resolved)."""
    return DISPATCH.run(backend, x, weights, biases, perm, offsets)


@expert_linear_op.register_fake
def _expert_linear_fake(x, weights, biases, perm, offsets, backend):
    return x.new_empty((x.shape[0], weights[0].shape[0]))
