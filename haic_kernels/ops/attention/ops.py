"""The ``haic_kernels::attention`` and ``haic_kernels::attention_kvcache`` custom ops: their
dispatch tables and fake kernels.

Arguments arrive checked by api.py / kvcache.py with the backend resolved. ``attention`` always
returns three tensors ``(out, lse, scores)``; those not asked for are empty (shape ``[0]``), so
the schema is fixed for torch.compile. Backends are imported on first use; the fast ones
allocate through ``_common.new_output``.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import Dispatch, new_output

__all__ = ["DISPATCH", "KVCACHE", "attention_kvcache_op", "attention_op"]


def _shapes(q, k, cu_seqlens, return_lse: bool, key_scores):
    """(lse shape or None, scores shape or None) of a call."""
    packed = cu_seqlens is not None
    lse = None
    if return_lse:
        lse = (q.shape[1], q.shape[0]) if packed else (q.shape[0], q.shape[2], q.shape[1])
    scores = None
    if key_scores is not None:
        scores = (k.shape[0],) if packed else (k.shape[0], k.shape[1])
    return lse, scores


# ---- attention -----------------------------------------------------------------------------------
# Each implementation: (q, k, v, cu_q, cu_k, block_ids, key_scores, causal, scale, max_q, max_k,
# return_lse) -> (out, lse or None, scores or None).


def _torch(q, k, v, cu_q, cu_k, ids, sel, causal, scale, max_q, max_k, return_lse):
    from haic_kernels.ops.attention.reference import attention_reference

    return attention_reference(
        q, k, v, cu_seqlens=cu_q, cu_seqlens_k=cu_k, block_ids=ids, key_scores=sel,
        causal=causal, scale=scale,
    )  # fmt: skip


def _sdpa(q, k, v, cu_q, cu_k, ids, sel, causal, scale, max_q, max_k, return_lse):
    from haic_kernels.ops.attention.torch_paths import attention_sdpa

    return attention_sdpa(
        q, k, v, cu_seqlens=cu_q, cu_seqlens_k=cu_k, block_ids=ids, key_scores=sel,
        causal=causal, scale=scale, need_lse=return_lse,
    )  # fmt: skip


def _flash_attn(q, k, v, cu_q, cu_k, ids, sel, causal, scale, max_q, max_k, return_lse):
    from haic_kernels.ops.attention.torch_paths import attention_flash_attn

    out, lse = attention_flash_attn(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale)
    return out, lse, None


def _triton(q, k, v, cu_q, cu_k, ids, sel, causal, scale, max_q, max_k, return_lse):
    from haic_kernels.ops.attention.triton import attention_triton

    return attention_triton(
        q, k, v, cu_seqlens=cu_q, cu_seqlens_k=cu_k, block_ids=ids, key_scores=sel,
        causal=causal, scale=scale, max_seqlen=max_q, max_seqlen_k=max_k, need_lse=return_lse,
        alloc=new_output,
    )  # fmt: skip


def _cuda(q, k, v, cu_q, cu_k, ids, sel, causal, scale, max_q, max_k, return_lse):
    """One query row per sequence through the CUDA split-K decode kernel."""
    from haic_kernels.ops.attention.cuda import decode_attention_cuda

    packed = cu_q is not None
    q3 = q if packed else q[:, 0]  # [B, Hq, D]
    b, hq, d = q3.shape
    out3 = new_output((b, hq, d), q.dtype, q.device)
    lse2 = new_output((b, hq), torch.float32, q.device) if return_lse else None
    decode_attention_cuda(
        q3.contiguous(), k, v, out3, scale=scale, cu_seqlens_k=cu_k if packed else None,
        lse=lse2,
    )  # fmt: skip
    out = out3 if packed else out3[:, None]
    lse = None
    if lse2 is not None:
        lse = lse2.t() if packed else lse2[:, :, None]  # [Hq, Tq=B] or [B, Hq, 1]
    return out, lse, None


DISPATCH = Dispatch(
    "attention",
    {"torch": _torch, "sdpa": _sdpa, "triton": _triton, "flash_attn": _flash_attn, "cuda": _cuda},
    auto_order=("cuda", "triton", "flash_attn"),
)


@torch.library.custom_op("haic_kernels::attention", mutates_args=())
def attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    block_ids: torch.Tensor | None,
    key_scores: torch.Tensor | None,
    causal: bool,
    scale: float,
    max_seqlen: int,
    max_seqlen_k: int,
    return_lse: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op behind `attention` (arguments checked, ``backend`` resolved)."""
    out, lse, scores = DISPATCH.run(
        backend, q, k, v, cu_seqlens, cu_seqlens_k, block_ids, key_scores, causal, scale,
        max_seqlen, max_seqlen_k, return_lse,
    )  # fmt: skip
    empty = q.new_empty((0,), dtype=torch.float32)
    lse = lse.to(torch.float32).contiguous() if return_lse and lse is not None else empty
    scores = scores.to(torch.float32).contiguous() if key_scores is not None else empty.clone()
    return out, lse, scores


@attention_op.register_fake
def _attention_fake(
    q, k, v, cu_seqlens, cu_seqlens_k, block_ids, key_scores, causal, scale, max_seqlen,
    max_seqlen_k, return_lse, backend,
):  # fmt: skip
    lse_shape, scores_shape = _shapes(q, k, cu_seqlens, return_lse, key_scores)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(lse_shape if lse_shape else (0,), dtype=torch.float32)
    scores = q.new_empty(scores_shape if scores_shape else (0,), dtype=torch.float32)
    return out, lse, scores


# ---- attention against a KV cache ----------------------------------------------------------------
# Each implementation: (q [B, Sq, Hq, D], k_cache, v_cache [B, S, Hkv, D], seqlens int32 [B]
# (valid keys per sequence), causal, scale) -> out [B, Sq, Hq, D].


def _kv_torch(q, k_cache, v_cache, seqlens, causal, scale):
    from haic_kernels.ops.attention.torch_paths import attention_kvcache_torch

    return attention_kvcache_torch(q, k_cache, v_cache, seqlens, causal, scale)


def _kv_triton(q, k_cache, v_cache, seqlens, causal, scale):
    from haic_kernels.ops.attention.triton import attention_triton

    out, _, _ = attention_triton(
        q, k_cache, v_cache, cu_seqlens=None, cu_seqlens_k=None, block_ids=None,
        key_scores=None, causal=causal, scale=scale, max_seqlen=q.shape[1],
        max_seqlen_k=k_cache.shape[1], need_lse=False, alloc=new_output, seqused_k=seqlens,
    )  # fmt: skip
    return out


def _kv_cuda(q, k_cache, v_cache, seqlens, causal, scale):
    """Sq == 1: the split-K decode kernel (the one query is the last position: it sees every
    valid key, so causal changes nothing)."""
    from haic_kernels.ops.attention.cuda import decode_attention_cuda

    b, _, hq, d = q.shape
    out = new_output((b, 1, hq, d), q.dtype, q.device)
    decode_attention_cuda(q[:, 0], k_cache, v_cache, out[:, 0], scale=scale, seqlens_k=seqlens)
    return out


KVCACHE = Dispatch(
    "attention_with_kvcache",
    {"torch": _kv_torch, "triton": _kv_triton, "cuda": _kv_cuda},
    auto_order=("cuda", "triton"),
)


@torch.library.custom_op("haic_kernels::attention_kvcache", mutates_args=())
def attention_kvcache_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    seqlens: torch.Tensor,
    causal: bool,
    scale: float,
    backend: str,
) -> torch.Tensor:
    """The op behind `attention_with_kvcache` (after the append; arguments checked)."""
    return KVCACHE.run(backend, q, k_cache, v_cache, seqlens, causal, scale)


@attention_kvcache_op.register_fake
def _attention_kvcache_fake(q, k_cache, v_cache, seqlens, causal, scale, backend):
    return torch.empty_like(q, memory_format=torch.contiguous_format)
