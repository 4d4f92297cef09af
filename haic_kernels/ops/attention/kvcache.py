"""attention_with_kvcache: new query tokens against a preallocated KV cache, in the shape of
flash-attn's ``flash_attn_with_kvcache``.

The public function: checks, the in-place append of new keys/values, and backend choice; the
``haic_kernels::attention_kvcache`` custom op and its dispatch table live in ops.py.
`append_and_attend` is its body after the checks, for a decode loop that owns its caches and
keeps their lengths in range by construction (the fast model's, whose RoPE kernel has already
written k and v into the cache rows: its layers call this with no append, one kernel).
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import (
    check_bool,
    check_no_grad,
    check_same_device,
    check_tensor,
    check_values,
)
from haic_kernels.ops.attention.api import FAST_HEAD_DIMS, check_qkv, check_scale
from haic_kernels.ops.attention.ops import KVCACHE

__all__ = ["append_and_attend", "attention_with_kvcache"]


def attention_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    *,
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    scale: float | None = None,
    causal: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of ``q`` over the valid rows of a KV cache, optionally appending first.

    Args:
        q: ``[B, Sq, Hq, D]`` (flash-attn layout), float16/bfloat16 (float32 for CPU tests).
        k_cache, v_cache: ``[B, S_max, Hkv, D]``, q's dtype and device (a slice of a larger
            preallocated cache is fine: any strides with a contiguous head dim).
        cache_seqlens: int32 ``[B]``: rows of each sequence already in the cache, in
            ``[0, S_max]`` (checked eagerly on CPU, by a device assert on CUDA; no host sync).
        k, v: optional new keys/values ``[B, Sn, Hkv, D]``, written into the caches (in place)
            at rows ``cache_seqlens[b] .. cache_seqlens[b] + Sn - 1`` before attending, which
            must fit in ``S_max``. ``cache_seqlens`` itself is not advanced: the caller adds
            ``Sn`` when it is done, as with flash-attn.
        scale: logit scale, default ``D ** -0.5``.
        causal: query ``i`` of ``Sq`` sees key ``j`` iff ``j <= i + L_b - Sq`` (bottom-right,
            ``L_b`` = valid rows after the append); else every valid row. Rows past ``L_b``
            never contribute, whatever the cache holds there (uninitialized memory included).
        backend: ``"auto"`` | ``"cuda"`` (``Sq == 1``: the split-K decode kernel; fp16/bf16,
            D in 64/112/128, 16-byte aligned cache rows) | ``"triton"`` | ``"torch"``.
            ``"auto"`` picks cuda for one query token, else triton, each where usable and
            verified on the GPU (see ``haic_kernels.ops._common``), else torch.

    Returns:
        ``out [B, Sq, Hq, D]`` in q's dtype: ``softmax(q k^T * scale + mask) v`` over the valid
        cache rows, fp32 accumulation; a row that sees no key is 0. Non-finite values follow
        `haic_kernels.attention`'s rule.

    Nothing on the kernel path allocates outside the caching allocator and nothing reads back to
    the host, so a call can be captured in a CUDA graph (the decode loop does).
    """
    if k is not None or v is not None:
        _check_writable(k_cache=k_cache, v_cache=v_cache)
    q, k_cache, v_cache, _ = check_qkv(
        q, k_cache, v_cache, packed=False, names=("q", "k_cache", "v_cache")
    )
    b = q.shape[0]
    s_max = k_cache.shape[1]
    lens = check_tensor("cache_seqlens", cache_seqlens, dims=1, dtypes=(torch.int32,))
    if lens.shape[0] != b:
        raise ValueError(f"cache_seqlens: expected shape ({b},), got {tuple(lens.shape)}")
    sn = _check_new(k, v, k_cache)
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, cache_seqlens=lens, k=k, v=v)
    check_bool("causal", causal)
    scale = check_scale(scale, q)
    check_no_grad("attention_with_kvcache", q=q, k_cache=k_cache, v_cache=v_cache, k=k, v=v)
    check_values(
        (lens >= 0) & (lens <= s_max - sn),
        f"cache_seqlens: expected lengths in [0, {s_max - sn}] (S_max={s_max}, {sn} new rows)",
    )
    lens = lens.contiguous()
    index = None
    if sn:
        # Row index of each new token; clamped so that a length the device assert rejects
        # cannot write outside the cache meanwhile.
        rows = (lens.long()[:, None] + torch.arange(sn, device=q.device)).clamp(0, s_max - 1)
        index = (torch.arange(b, device=q.device)[:, None].expand(b, sn), rows)
        lens = lens + sn
    return append_and_attend(q, k_cache, v_cache, lens, index, k, v, causal=causal, scale=scale,
                             backend=backend)  # fmt: skip


def append_and_attend(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    visible: torch.Tensor,
    index: tuple[torch.Tensor, torch.Tensor] | None,
    k: torch.Tensor | None,
    v: torch.Tensor | None,
    *,
    causal: bool = True,
    scale: float,
    backend: str = "auto",
) -> torch.Tensor:
    """`attention_with_kvcache` after its checks: write ``k``/``v`` [B, Sn, Hkv, D] at
    ``k_cache[index]`` (``index``: (batch, row) integer tensors broadcasting to [B, Sn], rows in
    range; None: no append), then attend over ``visible`` (int32 [B], contiguous: valid rows
    after the append). Nothing is checked here (the caller did, once): the decode loop's call."""
    if index is not None:
        k_cache[index] = k
        v_cache[index] = v
    chosen = KVCACHE.resolve(backend, q.device, unsupported=lambda n: _why(n, q, k_cache, v_cache))
    op = torch.ops.haic_kernels.attention_kvcache
    return op(q, k_cache, v_cache, visible, causal, scale, chosen)


def _check_writable(**caches: object) -> None:
    """Caches that are appended to are written in place: no copy may stand in for them (a
    strided head dim) and no two elements may share memory (stride 0)."""
    for name, t in caches.items():
        check_tensor(name, t)
        assert isinstance(t, torch.Tensor)
        if t.dim() and t.stride(-1) != 1:
            raise ValueError(
                f"{name}: appended to in place, so its head dim must be contiguous, got strides "
                f"{tuple(t.stride())}"
            )
        if any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape)):
            raise ValueError(f"{name}: appended to in place, so it cannot be a broadcast view")


def _check_new(k: object, v: object, k_cache: torch.Tensor) -> int:
    """Rows ``Sn`` of the new keys/values (0 without them)."""
    if k is None and v is None:
        return 0
    if k is None or v is None:
        raise ValueError(f"{'k' if k is None else 'v'}: k and v are given together or not at all")
    b, _, hkv, d = k_cache.shape
    for name, t in (("k", k), ("v", v)):
        check_tensor(name, t, dims=4, dtypes=(k_cache.dtype,), shape_hint="[B, Sn, Hkv, D]")
        if t.shape[0] != b or t.shape[2:] != (hkv, d):  # type: ignore[union-attr]
            raise ValueError(
                f"{name}: expected [B, Sn, Hkv, D] = [{b}, Sn, {hkv}, {d}] (the cache's), got "
                f"{tuple(t.shape)}"  # type: ignore[union-attr]
            )
    if v.shape != k.shape:  # type: ignore[union-attr]
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")  # type: ignore[union-attr]
    if k.shape[1] > k_cache.shape[1]:  # type: ignore[union-attr]
        raise ValueError(
            f"k: {k.shape[1]} new rows do not fit in a cache of {k_cache.shape[1]}"  # type: ignore[union-attr]
        )
    return int(k.shape[1])  # type: ignore[union-attr]


def _why(name: str, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> str | None:
    """Why backend ``name`` cannot run this call (None if it can)."""
    if name in ("triton", "cuda") and q.shape[-1] not in FAST_HEAD_DIMS:
        return f"head dim {q.shape[-1]} is not one of {FAST_HEAD_DIMS} (use 'torch')"
    if name != "cuda":
        return None
    if q.shape[1] != 1:
        return f"decode only: needs one query token per sequence (Sq == 1), got Sq={q.shape[1]}"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"needs float16 or bfloat16, got {q.dtype}"
    for name_, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.numel() and (t.data_ptr() % 16 or any(s % 8 for s in t.stride()[:-1])):
            return f"{name_}: rows must be 16-byte aligned (strides multiples of 8 elements)"
    return None
