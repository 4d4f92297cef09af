"""The ``haic_kernels::rope`` and ``haic_kernels::rope_to_cache`` custom ops: their dispatch
tables and fake kernels.

Arguments arrive checked by api.py (x 2-D with unit last stride, positions contiguous), with the
backend resolved. The Triton backend allocates its outputs through ``_common.new_output``.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import Dispatch, new_output

__all__ = ["DISPATCH", "TO_CACHE", "rope_op", "rope_to_cache_op"]


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


# ---- q out, k and v into a KV cache (one token per sequence) ----------------------------------


def _torch_to_cache(x, position_ids, inv_freq, k_cache, v_cache, lens, heads, interleaved,
                    release):  # fmt: skip
    q, k, v = _torch(x, position_ids, inv_freq, heads, [True, True, False], interleaved, release)
    rows = lens.clamp(0, k_cache.shape[1] - 1)  # as the kernel clamps
    index = (torch.arange(x.shape[0], device=x.device), rows)
    k_cache[index] = k
    v_cache[index] = v
    return q


def _triton_to_cache(x, position_ids, inv_freq, k_cache, v_cache, lens, heads, interleaved,
                     release):  # fmt: skip
    from haic_kernels.ops.rope.triton import rope_triton

    q = new_output((x.shape[0], heads[0], 2 * inv_freq.shape[0]), x.dtype, x.device)
    rope_triton(x, position_ids, inv_freq, [q, k_cache, v_cache], [True, True, False],
                interleaved, release, cache_seqlens=lens)  # fmt: skip
    return q


TO_CACHE = Dispatch("rope_qkv_to_cache", {"torch": _torch_to_cache, "triton": _triton_to_cache},
                    auto_order=("triton",))  # fmt: skip


@torch.library.custom_op("haic_kernels::rope_to_cache", mutates_args=("k_cache", "v_cache"))
def rope_to_cache_op(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    heads: list[int],
    interleaved: bool,
    release: bool,
    backend: str,
) -> torch.Tensor:
    """The op behind `rope_qkv_to_cache`: x [B, (Hq + 2 Hkv) * D] -> q [B, Hq, D]; k (rotated)
    and v written into the caches at row ``cache_seqlens[b]`` of sequence b."""
    return TO_CACHE.run(backend, x, position_ids, inv_freq, k_cache, v_cache, cache_seqlens,
                        heads, interleaved, release)  # fmt: skip


@rope_to_cache_op.register_fake
def _rope_to_cache_fake(x, position_ids, inv_freq, k_cache, v_cache, cache_seqlens, heads,
                        interleaved, release, backend):  # fmt: skip
    return x.new_empty((x.shape[0], heads[0], 2 * inv_freq.shape[0]))
