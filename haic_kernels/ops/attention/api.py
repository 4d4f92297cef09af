"""attention: flash-style multi-head attention (GQA, causal / full / frame blocks, varlen, decode).

Public function, argument checks and backend choice. The ``haic_kernels::attention`` custom op
(and its fake kernel) lives in ``dispatch.py``; backends are imported lazily, on first use.
"""

from __future__ import annotations

import itertools
import math

import torch

from haic_kernels.ops._common import check_same_device, check_tensor, resolve_backend
from haic_kernels.ops.attention import dispatch  # noqa: F401  (registers the custom op)

__all__ = ["BACKENDS", "DTYPES", "FAST_HEAD_DIMS", "attention"]

CHOICES = ("torch", "sdpa", "triton", "flash_attn", "cuda")
BACKENDS = ("auto", *CHOICES)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Head dims the fast backends (triton, cuda) are built and tested for: 64 (generic), 112 (the
# EVA2-CLIP vision tower), 128 (the LM). The reference and sdpa paths take any head dim.
FAST_HEAD_DIMS = (64, 112, 128)


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
    backend: str = "auto",
):
    """Softmax attention ``softmax(q k^T * scale + mask) v``, flash-attn layout, no S x S matrix.

    Layouts (``Hq % Hkv == 0``; GQA: KV head ``j`` serves query heads ``j*r .. j*r+r-1``,
    ``r = Hq / Hkv``):

    - padded: ``q [B, Sq, Hq, D]``, ``k, v [B, Sk, Hkv, D]``;
    - packed (varlen): ``q [Tq, Hq, D]``, ``k, v [Tk, Hkv, D]`` with ``cu_seqlens`` int32
      ``[B+1]`` (0, then non-decreasing, last = Tq) giving sequence ``b`` the query rows
      ``cu_seqlens[b] : cu_seqlens[b+1]``; ``cu_seqlens_k`` (default: ``cu_seqlens``) does the
      same for the keys. ``max_seqlen`` (optional) is the longest query sequence, to save a
      device-to-host read of ``cu_seqlens``.

    dtypes: float16 / bfloat16 (float32 is accepted too, for CPU tests); q, k, v share dtype and
    device. Head dim ``D``: any for "torch" and "sdpa", one of 64, 112, 128 for "triton"/"cuda".

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
        backend: ``"auto"`` | ``"triton"`` | ``"flash_attn"`` | ``"sdpa"`` | ``"torch"`` |
            ``"cuda"`` (decode only: one query per sequence, no block_ids / key_scores).
            ``"auto"`` picks for CUDA tensors, among those usable, verified on that GPU (see
            ``haic_kernels.ops._common``) and able to express the call: decode shapes
            ``cuda`` then ``triton``, else ``triton`` then ``flash_attn``, else ``sdpa``; for
            CPU tensors ``torch``. An explicit backend that cannot run raises
            `BackendUnavailable` (or ValueError when it cannot express the call).

    Returns:
        ``out`` (shape and dtype of ``q``); ``(out, lse)`` with ``return_lse``; ``(out, scores)``
        with ``key_scores``; ``(out, lse, scores)`` with both.

    Gradients: none (inference op); inputs that require grad under autograd raise RuntimeError.

    Registered as ``torch.ops.haic_kernels.attention`` (with a fake kernel), so
    ``torch.compile(fullgraph=True)`` traces through it.
    """
    packed = _check_qkv(q, k, v, cu_seqlens)
    cu_k = _check_cu_seqlens(q, k, cu_seqlens, cu_seqlens_k) if packed else None
    cu_q = cu_seqlens
    if not isinstance(causal, bool):
        raise TypeError(f"causal: expected a bool, got {causal!r}")
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse: expected a bool, got {return_lse!r}")
    d = q.shape[-1]
    if scale is None:
        scale = d**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale: expected a float, got {scale!r}")
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a finite float > 0, got {scale}")
    if max_seqlen is not None:
        if not packed:
            raise ValueError("max_seqlen: only meaningful with cu_seqlens (the packed layout)")
        if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
            raise TypeError(f"max_seqlen: expected an int >= 0 or None, got {max_seqlen!r}")
    block_ids = _check_block_ids(q, k, block_ids, causal, packed, cu_q, cu_seqlens_k)
    _check_key_scores(q, key_scores, packed)
    check_same_device(
        q=q, k=k, v=v, cu_seqlens=cu_q, cu_seqlens_k=cu_seqlens_k, block_ids=block_ids,
        key_scores=key_scores,
    )  # fmt: skip
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise RuntimeError(
            "attention: no backward pass (inference op); q, k or v requires grad - call it "
            "under torch.no_grad() / torch.inference_mode(), or .detach() the inputs"
        )
    chosen = _resolve_backend(backend, q, k, packed, cu_q, block_ids, key_scores)
    out, lse, scores = torch.ops.haic_kernels.attention(
        q, k, v, cu_q, cu_k, block_ids, key_scores, causal, scale,
        max_seqlen, return_lse, chosen,
    )  # fmt: skip
    if key_scores is None and not return_lse:
        return out
    if key_scores is None:
        return out, lse
    if not return_lse:
        return out, scores
    return out, lse, scores


# ---- argument checks ----------------------------------------------------------------------------


def _check_qkv(q: object, k: object, v: object, cu_seqlens: object) -> bool:
    """Shapes, dtypes and head counts of q, k, v; returns whether the layout is packed."""
    packed = cu_seqlens is not None
    dims = 3 if packed else 4
    hint = "[T, H, D] (packed, with cu_seqlens)" if packed else "[B, S, H, D]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, dtypes=DTYPES)
        if t.dim() != dims:  # type: ignore[union-attr]
            extra = (
                "; a 3-dim q needs cu_seqlens (packed layout)"
                if not packed and t.dim() == 3  # type: ignore[union-attr]
                else ""
            )
            raise ValueError(
                f"{name}: expected {dims} dims {hint}, got shape {tuple(t.shape)}{extra}"  # type: ignore[union-attr]
            )
    assert isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)
    assert isinstance(v, torch.Tensor)
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} (that of q), got {t.dtype}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not packed and k.shape[0] != q.shape[0]:
        raise ValueError(f"k: expected batch {q.shape[0]} (that of q), got shape {tuple(k.shape)}")
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"k: expected head dim {q.shape[-1]} (that of q), got shape {tuple(k.shape)}"
        )
    hq, hkv = q.shape[-2], k.shape[-2]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(
            f"k: the number of query heads ({hq}) must be a multiple of the number of KV heads "
            f"({hkv}) (GQA)"
        )
    if q.shape[-1] == 0:
        raise ValueError(f"q: head dim must be >= 1, got shape {tuple(q.shape)}")
    return packed


def _check_one_cu(name: str, cu: object, total: int, what: str) -> torch.Tensor:
    check_tensor(name, cu, dims=1, shape_hint="[B+1]")
    assert isinstance(cu, torch.Tensor)
    if cu.dtype != torch.int32:
        raise TypeError(f"{name}: expected dtype torch.int32, got {cu.dtype}")
    if cu.numel() < 2:
        raise ValueError(f"{name}: expected [B+1] entries with B >= 1, got {cu.numel()}")
    if not torch.compiler.is_compiling():  # value checks read the device; skipped when tracing
        vals = cu.tolist()
        if vals[0] != 0:
            raise ValueError(f"{name}: must start at 0, got {vals[0]}")
        if any(b < a for a, b in itertools.pairwise(vals)):
            raise ValueError(f"{name}: must be non-decreasing (cumulative lengths), got {vals}")
        if vals[-1] != total:
            raise ValueError(
                f"{name}: the last entry must equal the number of {what} rows ({total}), "
                f"got {vals[-1]}"
            )
    return cu


def _check_cu_seqlens(
    q: torch.Tensor, k: torch.Tensor, cu_seqlens: object, cu_seqlens_k: object
) -> torch.Tensor:
    cu_q = _check_one_cu("cu_seqlens", cu_seqlens, q.shape[0], "q")
    if cu_seqlens_k is None:
        if k.shape[0] != q.shape[0]:
            raise ValueError(
                f"cu_seqlens_k: needed when k has a different number of rows ({k.shape[0]}) "
                f"than q ({q.shape[0]})"
            )
        return cu_q
    cu_k = _check_one_cu("cu_seqlens_k", cu_seqlens_k, k.shape[0], "k")
    if cu_k.numel() != cu_q.numel():
        raise ValueError(
            f"cu_seqlens_k: expected {cu_q.numel()} entries (as cu_seqlens), got {cu_k.numel()}"
        )
    return cu_k


def _check_block_ids(
    q: torch.Tensor,
    k: torch.Tensor,
    block_ids: object,
    causal: bool,
    packed: bool,
    cu_q: torch.Tensor | None,
    cu_k: object,
) -> torch.Tensor | None:
    if block_ids is None:
        return None
    check_tensor("block_ids", block_ids, dtypes=(torch.int32, torch.int64))
    assert isinstance(block_ids, torch.Tensor)
    if not causal:
        raise ValueError(
            "block_ids: only with causal=True (with causal=False every key is visible already)"
        )
    if packed:
        if k.shape[0] != q.shape[0]:
            raise ValueError("block_ids: needs the same query and key rows (Tq == Tk)")
        same = cu_k is None or cu_k is cu_q or torch.compiler.is_compiling()
        if not same and not torch.equal(cu_k, cu_q):  # type: ignore[arg-type]
            raise ValueError("block_ids: needs cu_seqlens_k equal to cu_seqlens")
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


def _check_key_scores(q: torch.Tensor, key_scores: object, packed: bool) -> None:
    if key_scores is None:
        return
    check_tensor("key_scores", key_scores, dtypes=(torch.bool,))
    assert isinstance(key_scores, torch.Tensor)
    want = (q.shape[0],) if packed else (q.shape[0], q.shape[1])
    if tuple(key_scores.shape) != want:
        raise ValueError(
            f"key_scores: expected a bool mask of shape {want} (query rows), "
            f"got {tuple(key_scores.shape)}"
        )


# ---- backend choice -----------------------------------------------------------------------------


def _is_decode(q: torch.Tensor, packed: bool, cu_q: torch.Tensor | None) -> bool:
    """One query row per sequence (the CUDA decode kernel's shape)."""
    if not packed:
        return q.shape[1] == 1
    if q.shape[0] != cu_q.numel() - 1:  # type: ignore[union-attr]
        return False
    if torch.compiler.is_compiling():
        return False  # cannot read cu_seqlens while tracing: leave decode to the explicit backend
    return bool((cu_q.diff() == 1).all())  # type: ignore[union-attr]


def unsupported_reason(
    backend: str,
    q: torch.Tensor,
    packed: bool,
    decode: bool,
    block_ids: torch.Tensor | None,
    key_scores: torch.Tensor | None,
) -> str | None:
    """Why ``backend`` cannot express this call (None if it can)."""
    d = q.shape[-1]
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


def _resolve_backend(
    backend: str,
    q: torch.Tensor,
    k: torch.Tensor,
    packed: bool,
    cu_q: torch.Tensor | None,
    block_ids: torch.Tensor | None,
    key_scores: torch.Tensor | None,
) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    decode = _is_decode(q, packed, cu_q) if backend in ("auto", "cuda") else False
    if backend != "auto":
        resolve_backend("attention", backend, q.device, choices=CHOICES, auto_order=())
        why = unsupported_reason(backend, q, packed, decode, block_ids, key_scores)
        if why is not None:
            raise ValueError(f"backend: {backend!r} cannot run this call: {why}")
        return backend
    order = ("cuda", "triton") if decode else ("triton", "flash_attn")
    order = tuple(
        b for b in order if unsupported_reason(b, q, packed, decode, block_ids, key_scores) is None
    )
    fallback = "sdpa" if q.device.type == "cuda" else "torch"
    return resolve_backend(
        "attention", "auto", q.device, choices=CHOICES, auto_order=order, fallback=fallback
    )
