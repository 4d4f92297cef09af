"""The ``haic_kernels::attention`` custom op: its fake kernel and the call into each backend.

Arguments arrive checked by api.py with the backend already resolved. The op always returns
three tensors ``(out, lse, scores)``; those not asked for are empty (shape ``[0]``), so the
schema is fixed for torch.compile.
"""

from __future__ import annotations

import torch

__all__ = ["new_output"]


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation of the fast backends (tests replace it to poison the buffers)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _shapes(q, k, cu_seqlens, return_lse: bool, key_scores):
    """(lse shape or None, scores shape or None) of a call."""
    packed = cu_seqlens is not None
    need_lse = return_lse
    lse = (
        ((q.shape[1], q.shape[0]) if packed else (q.shape[0], q.shape[2], q.shape[1]))
        if need_lse
        else None
    )
    scores = None
    if key_scores is not None:
        scores = (k.shape[0],) if packed else (k.shape[0], k.shape[1])
    return lse, scores


@torch.library.custom_op("haic_kernels::attention", mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    block_ids: torch.Tensor | None,
    key_scores: torch.Tensor | None,
    causal: bool,
    scale: float,
    max_seqlen: int | None,
    return_lse: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op behind `attention` (arguments checked, ``backend`` resolved)."""
    kw = dict(
        cu_seqlens=cu_seqlens, cu_seqlens_k=cu_seqlens_k, block_ids=block_ids,
        key_scores=key_scores, causal=causal, scale=scale,
    )  # fmt: skip
    if backend == "torch":
        from haic_kernels.ops.attention.reference import attention_reference

        out, lse, scores = attention_reference(q, k, v, **kw)
    elif backend == "sdpa":
        from haic_kernels.ops.attention.torch_paths import attention_sdpa

        out, lse, scores = attention_sdpa(q, k, v, need_lse=return_lse, **kw)
    elif backend == "flash_attn":
        from haic_kernels.ops.attention.torch_paths import attention_flash_attn

        out, lse = attention_flash_attn(
            q, k, v, cu_seqlens, cu_seqlens_k, max_seqlen, causal, scale
        )
        scores = None
    elif backend == "triton":
        from haic_kernels.ops.attention.triton import attention_triton

        out, lse, scores = attention_triton(
            q, k, v, max_seqlen=max_seqlen, need_lse=return_lse, alloc=new_output, **kw
        )
    elif backend == "cuda":
        out, lse = _decode_cuda(q, k, v, cu_seqlens, cu_seqlens_k, scale, return_lse)
        scores = None
    else:
        raise ValueError(f"backend: expected a resolved backend, got {backend!r}")
    empty = q.new_empty((0,), dtype=torch.float32)
    lse = lse.contiguous() if return_lse and lse is not None else empty
    scores = scores.contiguous() if key_scores is not None else empty.clone()
    return out, lse, scores


def _decode_cuda(q, k, v, cu_seqlens, cu_seqlens_k, scale: float, return_lse: bool):
    """One query row per sequence through the CUDA split-K decode kernel."""
    from haic_kernels.ops.attention.cuda import decode_attention_cuda

    packed = cu_seqlens is not None
    q3 = q if packed else q[:, 0]  # [B, Hq, D]
    b, hq, d = q3.shape
    out3 = new_output((b, hq, d), q.dtype, q.device)
    lse2 = new_output((b, hq), torch.float32, q.device) if return_lse else None
    decode_attention_cuda(
        q3.contiguous(), k, v, out3, scale=scale,
        cu_seqlens_k=cu_seqlens_k if packed else None, lse=lse2,
    )  # fmt: skip
    out = out3 if packed else out3[:, None]
    lse = None
    if lse2 is not None:
        lse = lse2.t() if packed else lse2[:, :, None]  # [Hq, Tq=B] or [B, Hq, 1]
    return out, lse


@_attention_op.register_fake
def _attention_fake(
    q, k, v, cu_seqlens, cu_seqlens_k, block_ids, key_scores, causal, scale, max_seqlen,
    return_lse, backend,
):  # fmt: skip
    lse_shape, scores_shape = _shapes(q, k, cu_seqlens, return_lse, key_scores)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(lse_shape if lse_shape else (0,), dtype=torch.float32)
    scores = q.new_empty(scores_shape if scores_shape else (0,), dtype=torch.float32)
    return out, lse, scores
