"""attention: flash-style multi-head attention (GQA, causal / full / frame blocks, varlen, decode).

The public function and its result type: argument checks and backend choice. The
``haic_kernels::attention`` custom op and its dispatch table live in ops.py; decode against a
KV cache has its own public function in kvcache.py.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from haic_kernels.ops._common import (
    check_bool,
    check_cu_seqlens,
    check_float,
    check_max_seqlen,
    check_no_grad,
    check_same_device,
    check_tensor,
    check_values,
)
from haic_kernels.ops.attention.ops import DISPATCH

__all__ = ["BACKENDS", "DTYPES", "FAST_HEAD_DIMS", "KEY_BIAS_BACKENDS", "AttentionOutput",
           "attention"]  # fmt: skip

BACKENDS = ("auto", *DISPATCH.choices)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Head dims the fast backends (triton, cuda) are built and tested for: 64 (generic), 112 (the
# EVA2-CLIP vision tower), 128 (the LM). The reference and sdpa paths take any head dim.
FAST_HEAD_DIMS = (64, 112, 128)
# The backends that add `attention`'s key_bias (the others refuse a call with one).
KEY_BIAS_BACKENDS = ("torch", "triton")


class AttentionOutput(NamedTuple):
    """What `attention` returns when an extra is asked for (the others are None).

    ``out``: shape and dtype of q. ``lse``: float32 ``[B, Hq, Sq]`` (packed ``[Hq, Tq]``), with
    ``return_lse``. ``key_scores``: float32 ``[B, Sk]`` (packed ``[Tk]``), with ``key_scores``.
    """

    out: torch.Tensor
    lse: torch.Tensor | None = None
    key_scores: torch.Tensor | None = None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    cu_seqlens: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    block_ids: torch.Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    key_scores: torch.Tensor | None = None,
    key_bias: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor | AttentionOutput:
    """Softmax attention ``softmax(q k^T * scale + mask) v``, flash-attn layout, no S x S matrix.

    Layouts (``Hq % Hkv == 0``; GQA: KV head ``j`` serves query heads ``j*r .. j*r+r-1``,
    ``r = Hq / Hkv``):

    - padded: ``q [B, Sq, Hq, D]``, ``k, v [B, Sk, Hkv, D]``;
    - packed (varlen): ``q [Tq, Hq, D]``, ``k, v [Tk, Hkv, D]`` with ``cu_seqlens`` (integer
      ``[B+1]``: 0, then non-decreasing, last = Tq) giving sequence ``b`` the query rows
      ``cu_seqlens[b] : cu_seqlens[b+1]``; ``cu_seqlens_k`` (default: ``cu_seqlens``) does the
      same for the keys. ``max_seqlen`` (optional) is the longest query sequence, to save a
      device-to-host read of ``cu_seqlens`` on a GPU. Both are checked, never trusted: on CPU
      eagerly (ValueError), on CUDA by asynchronous device asserts (no host sync), while the
      kernels clamp every boundary and write NaN to the rows past a too-small ``max_seqlen``.

    dtypes: float16 / bfloat16 (float32 is accepted too, for CPU tests); q, k, v share dtype and
    device; any strides (a head dim that is not contiguous costs a copy). Head dim ``D``: any
    >= 1 for "torch" and "sdpa", one of 64, 112, 128 for "triton"/"cuda". Zero-size batches,
    sequences and heads give empty results.

    Non-finite values, the same on every backend: a key the mask hides never contributes to a
    row, whatever its K and V hold (NaN, Inf). Visible ones propagate: a visible key with a
    non-finite K row, or a row of q that is non-finite, makes that output row non-finite (NaN,
    and its lse NaN or +inf); a visible non-finite ``v[j, d]`` makes ``out[i, d]`` non-finite.

    Masks, per sequence, for query ``i`` (of ``Sq``) and key ``j`` (of ``Sk``):

    - ``causal=False``: every key is visible;
    - ``causal=True``: key ``j`` is visible if ``j <= i + Sk - Sq`` (bottom-right aligned, as
      flash-attn: one new token against a cache is ``causal=True`` with ``Sq = 1``). A query row
      that sees no key (possible when ``Sq > Sk``) outputs 0 and has ``lse = -inf``;
    - ``block_ids`` (int32 ``[B, S]``, packed ``[T]``; needs ``causal=True`` and the same query
      and key sequences): also visible if ``block_ids[i] == block_ids[j] >= 0``, so the tokens
      of one frame see each other both ways. Example, ids ``[-1, 0, 0, 0, -1, 1, 1]``::

                 keys j ->  0 1 2 3 4 5 6
            causal, Sq=Sk:             block_ids [-1 0 0 0 -1 1 1]:
            i=0  x . . . . . .         x . . . . . .
            i=1  x x . . . . .         x x x x . . .
            i=2  x x x . . . .         x x x x . . .
            i=3  x x x x . . .         x x x x . . .
            i=4  x x x x x . .         x x x x x . .
            i=5  x x x x x x .         x x x x x x x
            i=6  x x x x x x x         x x x x x x x

            causal, Sq=2, Sk=5 (bottom-right):
            i=0  x x x x .
            i=1  x x x x x

    Args:
        q, k, v: see the layouts above.
        causal: causal (True, the LM) or full (False, the vision tower) attention.
        cu_seqlens, cu_seqlens_k, max_seqlen: the packed layout (see above).
        block_ids: bidirectional frame blocks on top of the causal mask (see above).
        scale: logit scale, default ``D ** -0.5``.
        return_lse: also return the row log-sum-exp ``lse = log(sum_j exp(s_ij))`` of the scaled,
            masked logits (natural log), float32 ``[B, Hq, Sq]`` (packed ``[Hq, Tq]``).
        key_scores: bool ``[B, Sq]`` (packed ``[Tq]``) choosing query rows; then also return
            float32 ``scores [B, Sk]`` (packed ``[Tk]``): for each sequence, the attention mass
            each key receives, averaged over the heads and the chosen rows::

                scores[b, j] = mean over h, and over i with key_scores[b, i], of P[b, h, i, j]

            (0 for a sequence with no chosen row): what FastV-style token pruning ranks by.
            The fast path computes it in a second pass over the chosen rows that reuses the row
            LSE of the forward pass; no ``S x S`` matrix is stored.
        key_bias: float ``[B, Sk]`` (packed ``[Tk]``), added to every head's logit of key ``j``
            after the scale: ``s_ij = q_i k_j * scale + key_bias[j]`` (masks still apply).
            ToMe's proportional attention passes ``log(size)`` of merged tokens. Backends in
            `KEY_BIAS_BACKENDS` only ("torch", "triton"); the others raise ValueError naming
            ``key_bias``, and "auto" picks one that adds it.
        backend: ``"auto"`` | ``"triton"`` | ``"flash_attn"`` | ``"sdpa"`` | ``"torch"`` |
            ``"cuda"`` (decode only: one query per sequence, no block_ids / key_scores).
            ``"auto"`` picks for CUDA tensors, among those usable, verified on that GPU (see
            ``haic_kernels.ops._common``) and able to express the call: decode shapes
            ``cuda`` then ``triton``, else ``triton`` then ``flash_attn``, else ``sdpa``; for
            CPU tensors ``torch``. An explicit backend that cannot run raises
            `BackendUnavailable` (or ValueError when it cannot express the call).

    Returns:
        ``out`` (shape and dtype of ``q``, contiguous) when no extra is asked for; otherwise one
        `AttentionOutput` ``(out, lse, key_scores)`` with the extras not asked for set to None.

    Gradients: none (inference op); inputs that require grad under autograd raise RuntimeError.

    Registered as ``torch.ops.haic_kernels.attention`` (with a fake kernel), so
    ``torch.compile(fullgraph=True)`` traces through it.
    """
    q, k, v, packed = check_qkv(q, k, v, packed=cu_seqlens is not None)
    check_bool("causal", causal)
    check_bool("return_lse", return_lse)
    scale = check_scale(scale, q)
    cu_q = cu_k = None
    max_q = max_k = 0
    if packed:
        cu_q, cu_k, max_q, max_k = _check_packed(q, k, cu_seqlens, cu_seqlens_k, max_seqlen)
    elif max_seqlen is not None:
        raise ValueError("max_seqlen: only meaningful with cu_seqlens (the packed layout)")
    elif cu_seqlens_k is not None:
        raise ValueError("cu_seqlens_k: only with cu_seqlens (the packed layout)")
    block_ids = _check_block_ids(q, k, block_ids, causal, packed, cu_q, cu_k)
    key_scores = _check_key_scores(q, key_scores, packed)
    key_bias = _check_key_bias(k, key_bias, packed)
    check_same_device(q=q, k=k, v=v, block_ids=block_ids, key_scores=key_scores,
                      key_bias=key_bias)  # fmt: skip
    check_no_grad("attention", q=q, k=k, v=v)
    decode = q.shape[1] == 1 if not packed else (q.shape[0] == cu_q.numel() - 1 and max_q <= 1)
    chosen = _choose_backend(backend, q, decode, block_ids, key_scores, key_bias)
    out, lse, scores = torch.ops.haic_kernels.attention(
        q, k, v, cu_q, cu_k, block_ids, key_scores, key_bias, causal, scale, max_q, max_k,
        return_lse, chosen,
    )  # fmt: skip
    if key_scores is None and not return_lse:
        return out
    return AttentionOutput(
        out, lse if return_lse else None, scores if key_scores is not None else None
    )


# ---- argument checks (shared with kvcache.py) ---------------------------------------------------


def check_qkv(
    q: object, k: object, v: object, *, packed: bool, names: tuple[str, str, str] = ("q", "k", "v")
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Shapes, dtypes, devices and head counts of q, k, v (unit head-dim stride on return)."""
    dims = 3 if packed else 4
    hint = "[T, H, D] (packed, with cu_seqlens)" if packed else "[B, S, H, D]"
    nq, nk, nv = names
    out = []
    for name, t in zip(names, (q, k, v)):
        check_tensor(name, t, dtypes=DTYPES)
        if t.dim() != dims:  # type: ignore[union-attr]
            extra = "; a 3-dim q needs cu_seqlens (packed layout)" if t.dim() == 3 else ""  # type: ignore[union-attr]
            raise ValueError(
                f"{name}: expected {dims} dims {hint}, got shape {tuple(t.shape)}{extra}"  # type: ignore[union-attr]
            )
        out.append(check_tensor(name, t, layout="rows"))
    q, k, v = out
    check_same_device(**{nq: q, nk: k, nv: v})
    for name, t in ((nk, k), (nv, v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} (that of {nq}), got {t.dtype}")
    if v.shape != k.shape:
        raise ValueError(f"{nv}: expected the shape of {nk} {tuple(k.shape)}, got {tuple(v.shape)}")
    if not packed and k.shape[0] != q.shape[0]:
        raise ValueError(
            f"{nk}: expected batch {q.shape[0]} (that of {nq}), got shape {tuple(k.shape)}"
        )
    if q.shape[-1] == 0:
        raise ValueError(f"{nq}: head dim must be >= 1, got shape {tuple(q.shape)}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"{nk}: expected head dim {q.shape[-1]} (that of {nq}), got shape {tuple(k.shape)}"
        )
    hq, hkv = q.shape[-2], k.shape[-2]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(
            f"{nk}: the number of query heads ({hq}) must be a multiple of the number of KV "
            f"heads ({hkv}) (GQA)"
        )
    return q, k, v, packed


def check_scale(scale: object, q: torch.Tensor) -> float:
    """``scale`` (default ``D ** -0.5``): a finite float > 0."""
    return check_float("scale", q.shape[-1] ** -0.5 if scale is None else scale, positive=True)


def _check_packed(q, k, cu_seqlens, cu_seqlens_k, max_seqlen):
    """(cu_q, cu_k, max_q, max_k) of the packed layout, by the one cu_seqlens rule."""
    cu_q = check_cu_seqlens("cu_seqlens", cu_seqlens, q.shape[0], q.device, what="query rows")
    max_q = check_max_seqlen("max_seqlen", max_seqlen, cu_q, q.shape[0])
    if cu_seqlens_k is None:
        if k.shape[0] != q.shape[0]:
            raise ValueError(
                f"cu_seqlens_k: needed when k has a different number of rows ({k.shape[0]}) "
                f"than q ({q.shape[0]})"
            )
        return cu_q, cu_q, max_q, max_q
    cu_k = check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.shape[0], q.device, what="key rows")
    if cu_k.numel() != cu_q.numel():
        raise ValueError(
            f"cu_seqlens_k: expected {cu_q.numel()} entries (as cu_seqlens), got {cu_k.numel()}"
        )
    # Only a launch-size hint for the key-scores pass: no host read for it.
    max_k = check_max_seqlen("cu_seqlens_k", None, cu_k, k.shape[0], sync=False)
    return cu_q, cu_k, max_q, max_k


def _check_block_ids(q, k, block_ids, causal, packed, cu_q, cu_k) -> torch.Tensor | None:
    if block_ids is None:
        return None
    check_tensor("block_ids", block_ids, dtypes=(torch.int32, torch.int64), device=q.device)
    if not causal:
        raise ValueError(
            "block_ids: only with causal=True (with causal=False every key is visible already)"
        )
    if packed:
        if k.shape[0] != q.shape[0]:
            raise ValueError("block_ids: needs the same query and key rows (Tq == Tk)")
        if cu_k is not cu_q:
            check_values(lambda: cu_k == cu_q, "block_ids: needs cu_seqlens_k equal to cu_seqlens")
        want = (q.shape[0],)
    else:
        if k.shape[1] != q.shape[1]:
            raise ValueError(
                f"block_ids: needs Sq == Sk (frames of one sequence), got Sq={q.shape[1]}, "
                f"Sk={k.shape[1]}"
            )
        want = (q.shape[0], q.shape[1])
    if tuple(block_ids.shape) != want:
        raise ValueError(f"block_ids: expected shape {want}, got {tuple(block_ids.shape)}")
    return block_ids.to(torch.int32).contiguous()


def _check_key_scores(q, key_scores, packed) -> torch.Tensor | None:
    if key_scores is None:
        return None
    check_tensor("key_scores", key_scores, dtypes=(torch.bool,), device=q.device)
    want = (q.shape[0],) if packed else (q.shape[0], q.shape[1])
    if tuple(key_scores.shape) != want:
        raise ValueError(
            f"key_scores: expected a bool mask of shape {want} (query rows), "
            f"got {tuple(key_scores.shape)}"
        )
    return key_scores.contiguous()


def _check_key_bias(k, key_bias, packed) -> torch.Tensor | None:
    if key_bias is None:
        return None
    check_tensor("key_bias", key_bias, dtypes=(torch.float32,), device=k.device)
    want = (k.shape[0],) if packed else (k.shape[0], k.shape[1])
    if tuple(key_bias.shape) != want:
        raise ValueError(
            f"key_bias: expected float32 of shape {want} (one bias per key), got "
            f"{tuple(key_bias.shape)}"
        )
    check_values(lambda: torch.isfinite(key_bias), "key_bias: entries must be finite")
    return key_bias.contiguous()


# ---- backend choice -----------------------------------------------------------------------------


def unsupported_reason(
    backend: str,
    q: torch.Tensor,
    decode: bool,
    block_ids: torch.Tensor | None,
    key_scores: torch.Tensor | None,
    key_bias: torch.Tensor | None = None,
) -> str | None:
    """Why ``backend`` cannot express this call (None if it can)."""
    d = q.shape[-1]
    if key_bias is not None and backend not in KEY_BIAS_BACKENDS:
        return f"key_bias (a per-key logit bias) runs on {KEY_BIAS_BACKENDS} only, not {backend!r}"
    if backend in ("triton", "cuda") and d not in FAST_HEAD_DIMS:
        return f"head dim {d} is not one of {FAST_HEAD_DIMS} (use 'sdpa' or 'torch')"
    if backend == "cuda":
        if not decode:
            return "decode only: needs one query row per sequence (Sq == 1)"
        if block_ids is not None or key_scores is not None:
            return "decode only: no block_ids / key_scores (use 'triton')"
        if q.dtype not in (torch.float16, torch.bfloat16):
            return f"needs float16 or bfloat16, got {q.dtype}"
    if backend == "flash_attn":
        if block_ids is not None or key_scores is not None:
            return "flash-attn cannot express block_ids or key_scores (use 'triton' or 'sdpa')"
        if q.dtype not in (torch.float16, torch.bfloat16):
            return f"flash-attn needs float16 or bfloat16, got {q.dtype}"
    return None


def _resolve_backend(backend, q, k, packed, cu_q, block_ids, key_scores, key_bias=None) -> str:
    """The backend `attention` would run for these arguments (what the dispatch tests ask).
    Packed calls count as decode when every sequence has one query row; that reads
    ``cu_seqlens`` (a host sync on CUDA), so the op itself decides from ``max_seqlen``."""
    decode = q.shape[1] == 1
    if packed:
        decode = q.shape[0] == cu_q.numel() - 1 and bool((cu_q.diff() == 1).all())
    return _choose_backend(backend, q, decode, block_ids, key_scores, key_bias)


def _choose_backend(backend, q, decode, block_ids, key_scores, key_bias=None) -> str:
    def why(name: str) -> str | None:
        if backend == "auto" and decode and name == "flash_attn":
            return "auto sends decode shapes to cuda, then triton"
        return unsupported_reason(name, q, decode, block_ids, key_scores, key_bias)

    # sdpa cannot add key_bias: with one, a GPU falls back to the plain-torch path.
    fallback = "sdpa" if q.device.type == "cuda" and key_bias is None else "torch"
    return DISPATCH.resolve(backend, q.device, unsupported=why, fallback=fallback)
