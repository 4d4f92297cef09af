"""token_prune kernels: score, select, compact and merge visual tokens.

The public functions: argument checks and backend choice. The ``haic_kernels::token_prune_*``
custom ops and their dispatch tables live in ops.py. The pruning policies built on these live in
``haic_kernels.pruning``.

Shapes: ``F`` frames (all videos of a batch back to back), ``N`` patch tokens per frame (64 at
full size), ``D`` features; ``T`` tokens of a packed (varlen) sequence; ``G`` segments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from haic_kernels.ops._common import (
    check_cu_seqlens,
    check_int,
    check_max_seqlen,
    check_no_grad,
    check_same_device,
    check_tensor,
    check_values,
)
from haic_kernels.ops.token_prune.ops import COSINE, GATHER, MERGE, NEAREST, SELECT

__all__ = [
    "BACKENDS",
    "Compacted",
    "check_keep_ratio",
    "compact",
    "frame_cosine_scores",
    "gather_rows",
    "keep_counts",
    "merge_weighted",
    "nearest_kept",
    "segment_topk",
]

OP = "token_prune"
BACKENDS = ("auto", *COSINE.choices)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INTS = (torch.int32, torch.int64)


# ---- keep ratio -------------------------------------------------------------------------------


def check_keep_ratio(keep_ratio: object, name: str = "keep_ratio") -> float:
    """A number in (0, 1]; returns it as a float."""
    if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)):
        raise TypeError(f"{name}: expected a number in (0, 1], got {keep_ratio!r}")
    r = float(keep_ratio)
    if not 0.0 < r <= 1.0:
        raise ValueError(f"{name}: expected a number in (0, 1], got {keep_ratio!r}")
    return r


def keep_counts(lengths: torch.Tensor, keep_ratio: float, *, min_keep: int = 1) -> torch.Tensor:
    """How many tokens each segment keeps: int32 [G] from segment lengths [G].

    ``k = clamp(ceil(keep_ratio * n), min(min_keep, n), n)``. Rounding up means a non-empty
    segment never rounds to zero tokens (keep 0.01 of a 64-token frame keeps 1), ratio 1.0 keeps
    everything, and an empty segment keeps 0. ``ceil`` is taken on ``ratio * n - 1e-9`` so that
    products like 0.1 * 10 = 1.0000000000000002 do not round up to 2.
    """
    r = check_keep_ratio(keep_ratio)
    check_tensor("lengths", lengths, dims=1, dtypes=INTS)
    check_int("min_keep", min_keep, minimum=0)
    check_values(lengths >= 0, "lengths: segment lengths must be >= 0")
    n = lengths.to(torch.float64)
    k = torch.ceil(n * r - 1e-9).to(torch.long)
    k = torch.maximum(k, torch.clamp(lengths.to(torch.long), max=min_keep))
    return torch.minimum(k, lengths.to(torch.long)).to(torch.int32)


# ---- scoring ----------------------------------------------------------------------------------


def frame_cosine_scores(
    x: torch.Tensor,
    *,
    cu_frames: torch.Tensor | None = None,
    first_score: float = float("inf"),
    backend: str = "auto",
) -> torch.Tensor:
    """Temporal redundancy score of every token: 1 - cosine with the same token one frame back.

    Args:
        x: ``[F, N, D]`` float32/float16/bfloat16: N tokens per frame (grid order), the frames of
            all videos of the batch back to back. Any frame/token strides (e.g. the patch rows
            ``embeds[:, 1:-1]`` of the adapter output, read in place); last dim contiguous.
        cu_frames: int32/int64 ``[B+1]``, video b holds frames ``cu_frames[b] .. cu_frames[b+1]``
            (None: one video). No frame is compared across a video boundary.
        first_score: the score of every token of a video's first frame (default +inf, so the
            first frame ranks above every other token and top-k keeps it first).
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``.

    Returns float32 ``[F, N]``, accumulated in fp32::

        score[f, n] = 1 - <x[f,n], x[f-1,n]> / sqrt(max(|x[f,n]|^2 |x[f-1,n]|^2, 1e-16))
    """
    # The kernel takes any frame/token strides, not a strided last dim.
    x = check_tensor("x", x, dims=3, dtypes=FLOATS, shape_hint="[F, N, D]", layout="rows")
    check_no_grad(OP, x=x)
    if isinstance(first_score, bool) or not isinstance(first_score, (int, float)):
        raise TypeError(f"first_score: expected a number (+-inf allowed), got {first_score!r}")
    if math.isnan(first_score):
        raise ValueError("first_score: expected a number, got NaN (it would not rank)")
    f = x.shape[0]
    if cu_frames is None:
        cu = torch.tensor([0, f], dtype=torch.int32, device=x.device)
    else:
        cu = check_cu_seqlens("cu_frames", cu_frames, f, x.device, what="frames")
    # A video's first frame has no previous one. An empty video's start equals the next
    # video's (or F): marking that frame is right either way, and the extra slot absorbs F.
    starts = torch.zeros(f + 1, dtype=torch.bool, device=x.device)
    starts[cu[:-1].long().clamp(0, f)] = True
    ar = torch.arange(f, device=x.device, dtype=torch.int32)
    prev = torch.where(starts[:f], torch.full_like(ar, -1), ar - 1)
    chosen = COSINE.resolve(backend, x.device)
    return torch.ops.haic_kernels.token_prune_frame_cosine(x, prev, float(first_score), chosen)


def nearest_kept(x: torch.Tensor, keep: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """For each token, the most similar kept token of its own frame (the merge target).

    Args:
        x: ``[F, N, D]`` float32/float16/bfloat16 (N <= 1024 per frame).
        keep: bool ``[F, N]``.

    Returns int32 ``[F, N]``: ``argmax_{j: keep[f, j]} cos(x[f, i], x[f, j])`` (the lower index on
    ties); ``i`` itself where ``keep[f, i]``; -1 in a frame that keeps no token. Cosine as in
    `frame_cosine_scores`, the Gram matrix accumulated in fp32.
    """
    x = check_tensor("x", x, dims=3, dtypes=FLOATS, shape_hint="[F, N, D]", layout="contiguous")
    keep = check_tensor("keep", keep, dims=2, dtypes=(torch.bool,), layout="contiguous")
    check_no_grad(OP, x=x)
    check_same_device(x=x, keep=keep)
    if tuple(keep.shape) != tuple(x.shape[:2]):
        raise ValueError(f"keep: expected shape {tuple(x.shape[:2])}, got {tuple(keep.shape)}")
    if x.shape[1] > 1024:
        raise ValueError(f"x: at most 1024 tokens per frame, got N={x.shape[1]}")
    chosen = NEAREST.resolve(backend, x.device)
    return torch.ops.haic_kernels.token_prune_nearest_kept(x, keep, chosen)


# ---- selection --------------------------------------------------------------------------------


def segment_topk(
    scores: torch.Tensor,
    cu_seqlens: torch.Tensor,
    k: torch.Tensor,
    *,
    max_seqlen: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Stable top-k inside each segment of a ragged batch: the keep mask, in sequence order.

    Args:
        scores: float ``[T]`` (any float dtype; compared in fp32), no NaN; +inf means "keep
            first" and -inf "keep last".
        cu_seqlens: int32/int64 ``[G+1]``, segment g is ``scores[cu[g]:cu[g+1]]`` (a frame, a
            video, ...; empty segments allowed).
        k: int ``[G]``, tokens to keep per segment (clamped to [0, length]); see `keep_counts`.
        max_seqlen: the longest segment (computed if None: one device sync for CUDA tensors;
            pass it to avoid that). Checked, never trusted: too small raises (CPU) or fails a
            device assert (CUDA), and the kernels rank every element of longer segments anyway.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` | ``"cuda"`` (csrc/token_select.cu).

    Returns bool ``[T]``: ``keep[i]`` iff fewer than ``k[g]`` elements j of i's segment have
    ``s_j > s_i`` or (``s_j == s_i`` and ``j < i``): the k highest, ties to the lower index.
    ``keep.nonzero()`` gives the kept indices in sequence order.
    """
    check_tensor("scores", scores, dims=1, dtypes=(*FLOATS, torch.float64))
    check_no_grad(OP, scores=scores)
    t = scores.shape[0]
    cu = check_cu_seqlens("cu_seqlens", cu_seqlens, t, scores.device, what="scores")
    check_tensor("k", k, dims=1, dtypes=INTS, device=scores.device)
    if k.shape[0] != cu.shape[0] - 1:
        raise ValueError(
            f"k: expected {cu.shape[0] - 1} entries (one per segment), got {k.shape[0]}"
        )
    check_values(~torch.isnan(scores), "scores: NaN is not orderable; replace it (e.g. -inf)")
    longest = check_max_seqlen("max_seqlen", max_seqlen, cu, t)
    chosen = SELECT.resolve(backend, scores.device)
    return torch.ops.haic_kernels.token_prune_segment_topk(
        scores.to(torch.float32).contiguous(),
        cu,
        k.to(torch.int32).clamp_min(0),
        longest,
        chosen,
    )


# ---- compaction -------------------------------------------------------------------------------


def gather_rows(x: torch.Tensor, index: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``x[index]`` for x ``[R, ...]`` (any dtype) and index int ``[K]`` in ``[0, R)``.

    The range is checked eagerly for CPU tensors and by a device assert for CUDA ones; the
    kernel clamps each index into ``[0, R)`` meanwhile, so it never reads outside ``x``.
    """
    x = check_tensor("x", x, dims=range(1, 9), layout="contiguous")
    check_tensor("index", index, dims=1, dtypes=INTS)
    check_no_grad(OP, x=x)
    check_same_device(x=x, index=index)
    r = x.shape[0]
    check_values((index >= 0) & (index < r), f"index: entries must lie in [0, {r})")
    chosen = GATHER.resolve(backend, x.device)
    return torch.ops.haic_kernels.token_prune_gather_rows(
        x, index.to(torch.int64).contiguous(), chosen
    )


@dataclass
class Compacted:
    """The kept tokens, packed (varlen): what `compact` returns.

    ``hidden`` [T, ...]; ``token_type_ids`` / ``position_ids`` [T] (None when not given);
    ``kv``: the extra tensors gathered with the same rows; ``indices`` int64 [T]: row of each
    kept token in the flattened input (sequence order); ``cu_seqlens`` int32 [B+1] and
    ``max_seqlen`` for varlen attention.
    """

    hidden: torch.Tensor
    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    token_type_ids: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    kv: list[torch.Tensor] = field(default_factory=list)


def compact(
    hidden: torch.Tensor,
    keep: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    kv: Sequence[torch.Tensor] = (),
    backend: str = "auto",
) -> Compacted:
    """Drop the tokens not in ``keep``: one row gather per tensor, and the new ``cu_seqlens``.

    Args:
        hidden: ``[B, S, ...]`` padded batch (with keep ``[B, S]``), or packed ``[T, ...]``
            (with keep ``[T]`` and ``cu_seqlens`` int ``[B+1]``).
        keep: bool, True = the token stays. Padding of a padded batch must be False.
        token_type_ids, position_ids: int, the shape of ``keep``: gathered alongside (kept
            tokens keep their original position ids: nothing is renumbered).
        kv: more tensors whose leading dims are those of ``keep`` (KV cache rows of one layer,
            ``[B, S, Hkv, Dh]`` or packed ``[T, Hkv, Dh]``), gathered with the same rows.

    Returns `Compacted` (packed rows in sequence order, batch-major).
    """
    check_tensor("keep", keep, dims=(1, 2), dtypes=(torch.bool,))
    check_tensor("hidden", hidden, dims=range(keep.dim(), 9))
    check_same_device(hidden=hidden, keep=keep)
    if keep.device.type == "meta":
        raise ValueError("keep: compact's output size depends on keep's values; got a meta tensor")
    lead = tuple(keep.shape)
    if tuple(hidden.shape[: keep.dim()]) != lead:
        raise ValueError(f"hidden: leading dims must be keep's {lead}, got {tuple(hidden.shape)}")
    if keep.dim() == 1:
        if cu_seqlens is None:
            raise ValueError("cu_seqlens: required for packed hidden [T, ...] (keep [T])")
        cu_in = check_cu_seqlens("cu_seqlens", cu_seqlens, lead[0], keep.device, what="tokens")
        csum = torch.zeros(lead[0] + 1, dtype=torch.long, device=keep.device)
        csum[1:] = keep.long().cumsum(0)
        bounds = cu_in.long().clamp(0, lead[0])  # a lie on the GPU is asserted, not followed
        per_seq = csum[bounds[1:]] - csum[bounds[:-1]]
    else:
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens: only for packed input; a padded batch [B, S] has none")
        per_seq = keep.sum(dim=1)
    for name, t in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
        if t is not None:
            check_tensor(name, t, device=keep.device)
            if tuple(t.shape) != lead:
                raise ValueError(f"{name}: expected shape {lead}, got {tuple(t.shape)}")
    for i, t in enumerate(kv):
        check_tensor(f"kv[{i}]", t, device=keep.device)
        if tuple(t.shape[: keep.dim()]) != lead:
            raise ValueError(f"kv[{i}]: leading dims must be keep's {lead}, got {tuple(t.shape)}")
    idx = keep.reshape(-1).nonzero().squeeze(1)
    rows = lead[0] * (lead[1] if len(lead) == 2 else 1)

    def take(t: torch.Tensor) -> torch.Tensor:
        return gather_rows(t.reshape(rows, *t.shape[keep.dim() :]), idx, backend=backend)

    cu = torch.zeros(per_seq.shape[0] + 1, dtype=torch.int32, device=keep.device)
    cu[1:] = per_seq.cumsum(0)
    return Compacted(
        hidden=take(hidden),
        indices=idx,
        cu_seqlens=cu,
        max_seqlen=int(per_seq.max()) if per_seq.numel() else 0,
        token_type_ids=None if token_type_ids is None else token_type_ids.reshape(-1)[idx],
        position_ids=None if position_ids is None else position_ids.reshape(-1)[idx],
        kv=[take(t) for t in kv],
    )


# ---- merge ------------------------------------------------------------------------------------


def merge_weighted(
    x: torch.Tensor,
    target: torch.Tensor,
    sizes: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted merge of tokens into destination tokens of the same frame (scatter-reduce).

    Args:
        x: ``[F, N, D]`` float32/float16/bfloat16.
        target: int ``[F, N]``: the index within the frame each token merges into; a token with
            ``target[f, i] == i`` is a destination (a kept token). Every target must be a
            destination of the same frame (e.g. the output of `nearest_kept`).
        sizes: float ``[F, N]``, how many original tokens each token stands for (None: all 1);
            finite and > 0.

    Returns ``(merged [F, N, D] in x.dtype, new_sizes float32 [F, N])``: a destination i becomes
    ``sum_{j: target[j]==i} sizes[j] * x[j] / sum_{j: target[j]==i} sizes[j]`` (fp32
    accumulation, sources summed in index order) and its size that sum; other rows are copied
    unchanged with new size 0.
    """
    x = check_tensor("x", x, dims=3, dtypes=FLOATS, shape_hint="[F, N, D]", layout="contiguous")
    check_tensor("target", target, dims=2, dtypes=INTS)
    check_no_grad(OP, x=x)
    if tuple(target.shape) != tuple(x.shape[:2]):
        raise ValueError(f"target: expected shape {tuple(x.shape[:2])}, got {tuple(target.shape)}")
    if sizes is None:
        sizes = torch.ones(x.shape[:2], dtype=torch.float32, device=x.device)
    check_tensor("sizes", sizes, dims=2, dtypes=(torch.float32, torch.float64))
    check_same_device(x=x, target=target, sizes=sizes)
    if tuple(sizes.shape) != tuple(x.shape[:2]):
        raise ValueError(f"sizes: expected shape {tuple(x.shape[:2])}, got {tuple(sizes.shape)}")
    check_values(torch.isfinite(sizes) & (sizes > 0), "sizes: every size must be finite and > 0")
    n = x.shape[1]
    in_frame = (target >= 0) & (target < n)
    check_values(in_frame, f"target: entries must lie in [0, {n}) (an index within the frame)")
    t = torch.where(in_frame, target, 0).long()
    is_dest = t == torch.arange(n, device=x.device)
    msg = "target: every target must be a destination (target[f, t] == t)"
    check_values(torch.gather(is_dest, 1, t), msg)
    chosen = MERGE.resolve(backend, x.device)
    return torch.ops.haic_kernels.token_prune_merge(
        x, target.to(torch.int32).contiguous(), sizes.to(torch.float32).contiguous(), chosen
    )
