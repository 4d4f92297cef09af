"""The ``haic_kernels::rope`` custom op: its dispatch table and fake kernel.

Arguments arrive checked by api.py (x 2-D with unit last stride, positions contiguous), with the
backend resolved. The Triton backend allocates its outputs through ``_common.new_output``.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import Dispatch, new_output

__all__ = ["DISPATCH", "rope_op"]


def _torch(x, position_ids, inv_freq, heads, rotate, interleaved, release):
    from haic_kernels.ops.rope.reference import rope_reference

    return rope_reference(x, position_ids, inv_freq, heads, rotate, interleaved, release)


def _triton(x, position_ids, inv_freq, heads, rotate, interleaved, release):
    from haic_kernels.ops.rope.triton import rope_triton

    d = 2 * inv_freq.shape[0]
    outs = [new_output((x.shape[0], h, d), x.dtype, x.device) for h in heads]
    rope_triton(x, position_ids, inv_freq, outs, rotate, interleaved, release)
    return outs


DISPATCH = Dispatch("rope", {"torch": _torch, "triton": _triton}, auto_order=("triton",))


@torch.library.custom_op("haic_kernels::rope", mutates_args=())
def rope_op(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    heads: list[int],
    rotate: list[bool],
    interleaved: bool,
    release: bool,
    backend: str,
) -> list[torch.Tensor]:
    """The op behind `rope_qkv` / `apply_rope`: x [T, sum(heads) * D] -> [T, h, D] per group.
    ``release``: round positions and angles to x's dtype (``rope_precision="release"``)."""
    return DISPATCH.run(backend, x, position_ids, inv_freq, heads, rotate, interleaved, release)


@rope_op.register_fake
def _rope_fake(x, position_ids, inv_freq, heads, rotate, interleaved, release, backend):
    d = 2 * inv_freq.shape[0]
    return [x.new_empty((x.shape[0], h, d)) for h in heads]
