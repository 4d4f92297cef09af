"""token_prune kernels: score, select, compact and merge visual tokens.

Public functions, argument checks, backend choice and the ``haic_kernels::token_prune_*`` custom
ops. Backends are imported lazily, on first use. The pruning policies built on these live in
``haic_kernels.pruning``.

Shapes: ``F`` frames (all videos of a batch back to back), ``N`` patch tokens per frame (64 at
full size), ``D`` features; ``T`` tokens of a packed (varlen) sequence; ``G`` segments.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from haic_kernels.ops._common import check_same_device, check_tensor, resolve_backend

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
CHOICES = ("torch", "triton")
BACKENDS = ("auto", *CHOICES)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INTS = (torch.int32, torch.int64)


# segment_topk also has a CUDA kernel (csrc/token_select.cu); the other ops are Triton only.
SELECT_CHOICES = ("torch", "triton", "cuda")


def _resolve(backend: str, device: torch.device, select: bool = False) -> str:
    if select:
        return resolve_backend(
            OP, backend, device, choices=SELECT_CHOICES, auto_order=("cuda", "triton")
        )
    return resolve_backend(OP, backend, device, choices=CHOICES, auto_order=("triton",))


def _no_grad(name: str, t: torch.Tensor) -> None:
    if t.requires_grad:
        raise RuntimeError(
            f"{name}: token_prune ops have no backward (selection is not differentiable); "
            "call them under torch.no_grad() or pass a detached tensor"
        )


def _new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation of the fast backends (tests replace it to poison the buffer)."""
    return torch.empty(shape, dtype=dtype, device=device)


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
    if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 0:
        raise ValueError(f"min_keep: expected an int >= 0, got {min_keep!r}")
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
    check_tensor("x", x, dims=3, dtypes=FLOATS, shape_hint="[F, N, D]")
    _no_grad("x", x)
    f = x.shape[0]
    if cu_frames is None:
        cu = torch.tensor([0, f], dtype=torch.int64, device=x.device)
    else:
        cu = _check_cu("cu_frames", cu_frames, f, x.device)
    starts = torch.zeros(f, dtype=torch.bool, device=x.device)
    lens = cu[1:] - cu[:-1]
    starts[cu[:-1][lens > 0].long()] = True
    ar = torch.arange(f, device=x.device, dtype=torch.int32)
    prev = torch.where(starts, torch.full_like(ar, -1), ar - 1)
    chosen = _resolve(backend, x.device)
    if x.stride(-1) != 1:
        x = x.contiguous()  # the kernel takes any frame/token strides, not a strided last dim
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
    check_tensor("x", x, dims=3, dtypes=FLOATS, shape_hint="[F, N, D]")
    check_tensor("keep", keep, dims=2, dtypes=(torch.bool,))
    _no_grad("x", x)
    check_same_device(x=x, keep=keep)
    if tuple(keep.shape) != tuple(x.shape[:2]):
        raise ValueError(f"keep: expected shape {tuple(x.shape[:2])}, got {tuple(keep.shape)}")
    if x.shape[1] > 1024:
        raise ValueError(f"x: at most 1024 tokens per frame, got N={x.shape[1]}")
    chosen = _resolve(backend, x.device)
    return torch.ops.haic_kernels.token_prune_nearest_kept(x.contiguous(), keep, chosen)


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
        max_seqlen: the longest segment (computed if None; pass it to avoid a device sync).
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` | ``"cuda"`` (csrc/token_select.cu).

    Returns bool ``[T]``: ``keep[i]`` iff fewer than ``k[g]`` elements j of i's segment have
    ``s_j > s_i`` or (``s_j == s_i`` and ``j < i``): the k highest, ties to the lower index.
    ``keep.nonzero()`` gives the kept indices in sequence order.
    """
    check_tensor("scores", scores, dims=1, dtypes=(*FLOATS, torch.float64))
    _no_grad("scores", scores)
    t = scores.shape[0]
    cu = _check_cu("cu_seqlens", cu_seqlens, t, scores.device)
    check_tensor("k", k, dims=1, dtypes=INTS)
    check_same_device(scores=scores, cu_seqlens=cu_seqlens, k=k)
    if k.shape[0] != cu.shape[0] - 1:
        raise ValueError(
            f"k: expected {cu.shape[0] - 1} entries (one per segment), got {k.shape[0]}"
        )
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores: NaN is not orderable; replace it (e.g. with -inf) first")
    if max_seqlen is None:
        max_seqlen = int((cu[1:] - cu[:-1]).max()) if cu.shape[0] > 1 else 0
    chosen = _resolve(backend, scores.device, select=True)
    return torch.ops.haic_kernels.token_prune_segment_topk(
        scores.to(torch.float32).contiguous(),
        cu.to(torch.int32),
        k.to(torch.int32).clamp_min(0),
        int(max_seqlen),
        chosen,
    )


# ---- compaction -------------------------------------------------------------------------------


def gather_rows(x: torch.Tensor, index: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``x[index]`` for x ``[R, ...]`` (any dtype) and index int ``[K]`` in ``[0, R)``."""
    check_tensor("x", x, dims=range(1, 9))
    check_tensor("index", index, dims=1, dtypes=INTS)
    _no_grad("x", x)
    check_same_device(x=x, index=index)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= x.shape[0]):
        raise ValueError(f"index: entries must lie in [0, {x.shape[0]})")
    chosen = _resolve(backend, x.device)
    return torch.ops.haic_kernels.token_prune_gather_rows(
        x.contiguous(), index.to(torch.int64), chosen
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
    lead = tuple(keep.shape)
    if tuple(hidden.shape[: keep.dim()]) != lead:
        raise ValueError(f"hidden: leading dims must be keep's {lead}, got {tuple(hidden.shape)}")
    if keep.dim() == 1:
        if cu_seqlens is None:
            raise ValueError("cu_seqlens: required for packed hidden [T, ...] (keep [T])")
        cu_in = _check_cu("cu_seqlens", cu_seqlens, lead[0], keep.device)
        csum = torch.zeros(lead[0] + 1, dtype=torch.long, device=keep.device)
        csum[1:] = keep.long().cumsum(0)
        per_seq = csum[cu_in[1:].long()] - csum[cu_in[:-1].long()]
    else:
        if cu_seqlens is not None:
            raise ValueError("cu_seqlens: only for packed input; a padded batch [B, S] has none")
        per_seq = keep.sum(dim=1)
    for name, t in (("token_type_ids", token_type_ids), ("position_ids", position_ids)):
        if t is not None and tuple(t.shape) != lead:
            raise ValueError(f"{name}: expected shape {lead}, got {tuple(t.shape)}")
    for i, t in enumerate(kv):
        if not isinstance(t, torch.Tensor) or tuple(t.shape[: keep.dim()]) != lead:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"kv[{i}]: leading dims must be keep's {lead}, got {got}")
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
        sizes: float ``[F, N]``, how many original tokens each token stands for (None: all 1).

    Returns ``(merged [F, N, D] in x.dtype, new_sizes float32 [F, N])``: a destination i becomes
    ``sum_{j: target[j]==i} sizes[j] * x[j] / sum_{j: target[j]==i} sizes[j]`` (fp32
    accumulation, sources summed in index order) and its size that sum; other rows are copied
    unchanged with new size 0.
    """
    check_tensor("x", x, dims=3, dtypes=FLOATS, shape_hint="[F, N, D]")
    check_tensor("target", target, dims=2, dtypes=INTS)
    _no_grad("x", x)
    if tuple(target.shape) != tuple(x.shape[:2]):
        raise ValueError(f"target: expected shape {tuple(x.shape[:2])}, got {tuple(target.shape)}")
    if sizes is None:
        sizes = torch.ones(x.shape[:2], dtype=torch.float32, device=x.device)
    check_tensor("sizes", sizes, dims=2, dtypes=(torch.float32, torch.float64))
    check_same_device(x=x, target=target, sizes=sizes)
    if tuple(sizes.shape) != tuple(x.shape[:2]):
        raise ValueError(f"sizes: expected shape {tuple(x.shape[:2])}, got {tuple(sizes.shape)}")
    n = x.shape[1]
    if target.numel():
        if int(target.min()) < 0 or int(target.max()) >= n:
            raise ValueError(f"target: entries must lie in [0, {n}) (an index within the frame)")
        t = target.long()
        is_dest = t == torch.arange(n, device=x.device)
        if not bool(torch.gather(is_dest, 1, t).all()):
            raise ValueError("target: every target must be a destination (target[f, t] == t)")
    chosen = _resolve(backend, x.device)
    return torch.ops.haic_kernels.token_prune_merge(
        x.contiguous(), target.to(torch.int32).contiguous(), sizes.to(torch.float32), chosen
    )


# ---- helpers ----------------------------------------------------------------------------------


def _check_cu(name: str, cu: object, total: int, device: torch.device) -> torch.Tensor:
    t = check_tensor(name, cu, dims=1, dtypes=INTS)
    if t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got {t.device}")
    if t.shape[0] < 1:
        raise ValueError(f"{name}: expected [B+1] offsets starting at 0, got an empty tensor")
    vals = t.tolist()
    if vals[0] != 0 or vals[-1] != total or any(b < a for a, b in itertools.pairwise(vals)):
        raise ValueError(
            f"{name}: expected non-decreasing offsets from 0 to {total}, got {vals[:8]}"
            f"{'...' if len(vals) > 8 else ''}"
        )
    return t


# ---- custom ops -------------------------------------------------------------------------------


@torch.library.custom_op("haic_kernels::token_prune_frame_cosine", mutates_args=())
def _frame_cosine_op(
    x: torch.Tensor, prev: torch.Tensor, first: float, backend: str
) -> torch.Tensor:
    if backend == "torch":
        from haic_kernels.ops.token_prune.reference import frame_cosine_scores_reference

        return frame_cosine_scores_reference(x, prev, first)
    from haic_kernels.ops.token_prune.triton import frame_cosine_scores_triton

    out = _new_output(x.shape[:2], torch.float32, x.device)
    frame_cosine_scores_triton(x, prev, out, first)
    return out


@_frame_cosine_op.register_fake
def _(x, prev, first, backend):
    return x.new_empty(x.shape[:2], dtype=torch.float32)


@torch.library.custom_op("haic_kernels::token_prune_nearest_kept", mutates_args=())
def _nearest_kept_op(x: torch.Tensor, keep: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "torch":
        from haic_kernels.ops.token_prune.reference import nearest_kept_reference

        return nearest_kept_reference(x, keep)
    from haic_kernels.ops.token_prune.triton import nearest_kept_triton

    out = _new_output(x.shape[:2], torch.int32, x.device)
    nearest_kept_triton(x, keep.to(torch.int8).contiguous(), out)
    return out


@_nearest_kept_op.register_fake
def _(x, keep, backend):
    return x.new_empty(x.shape[:2], dtype=torch.int32)


@torch.library.custom_op("haic_kernels::token_prune_segment_topk", mutates_args=())
def _segment_topk_op(
    scores: torch.Tensor, cu: torch.Tensor, k: torch.Tensor, max_seqlen: int, backend: str
) -> torch.Tensor:
    if backend == "torch":
        from haic_kernels.ops.token_prune.reference import segment_topk_reference

        return segment_topk_reference(scores, cu, k)
    keep = _new_output(scores.shape, torch.int8, scores.device)
    keep.zero_()  # positions outside every segment stay dropped
    if backend == "cuda":
        from haic_kernels.ops.token_prune.cuda import segment_topk_cuda

        segment_topk_cuda(scores, cu, k, keep, max_seqlen)
    else:
        from haic_kernels.ops.token_prune.triton import segment_topk_triton

        segment_topk_triton(scores, cu, k, keep, max_seqlen)
    return keep.to(torch.bool)


@_segment_topk_op.register_fake
def _(scores, cu, k, max_seqlen, backend):
    return scores.new_empty(scores.shape, dtype=torch.bool)


@torch.library.custom_op("haic_kernels::token_prune_gather_rows", mutates_args=())
def _gather_rows_op(x: torch.Tensor, index: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "torch":
        from haic_kernels.ops.token_prune.reference import gather_rows_reference

        return gather_rows_reference(x, index)
    from haic_kernels.ops.token_prune.triton import gather_rows_triton

    out = _new_output((index.shape[0], *x.shape[1:]), x.dtype, x.device)
    flat, oflat = x.reshape(x.shape[0], -1), out.view(out.shape[0], -1)
    nbytes = flat.shape[1] * x.element_size()
    if x.shape[0] == 0 or index.shape[0] == 0 or nbytes == 0:
        return out
    # Rows as raw words: one kernel for every dtype (bool, ints, floats); 4-byte words when the
    # row allows, bytes otherwise.
    word = torch.int32 if nbytes % 4 == 0 else torch.uint8
    gather_rows_triton(flat.view(torch.uint8).view(word), index, oflat.view(torch.uint8).view(word))
    return out


@_gather_rows_op.register_fake
def _(x, index, backend):
    return x.new_empty((index.shape[0], *x.shape[1:]))


@torch.library.custom_op("haic_kernels::token_prune_merge", mutates_args=())
def _merge_op(
    x: torch.Tensor, target: torch.Tensor, sizes: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "torch":
        from haic_kernels.ops.token_prune.reference import merge_weighted_reference

        return merge_weighted_reference(x, target, sizes)
    from haic_kernels.ops.token_prune.triton import merge_weighted_triton

    out = _new_output(x.shape, x.dtype, x.device)
    new_sizes = _new_output(x.shape[:2], torch.float32, x.device)
    merge_weighted_triton(x, target, sizes.contiguous(), out, new_sizes)
    return out, new_sizes


@_merge_op.register_fake
def _(x, target, sizes, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape[:2], dtype=torch.float32)
