"""token_merge: the kernels behind token reduction inside the vision tower.

`bipartite_match` (ToMe's bipartite soft matching on packed frames), `merge_packed` (the
size-weighted merge that also compacts the rows) and `patch_difference` (uint8 change of each
patch from the previous frame). The policies built on them live in ``haic_kernels.pruning.vision``.

Shapes: ``T`` rows of packed frames (frame f is rows ``cu_seqlens[f] .. cu_seqlens[f+1]``, its
CLS row first), ``N`` frames, ``D`` features.
"""

from __future__ import annotations

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
from haic_kernels.ops.token_merge.format import NO_PREVIOUS
from haic_kernels.ops.token_merge.ops import MATCH, MERGE, OP, PATCH_DIFF, STEP
from haic_kernels.ops.token_prune.api import previous_frames

__all__ = ["BACKENDS", "NO_PREVIOUS", "bipartite_match", "max_merges", "merge_packed",
           "patch_difference"]  # fmt: skip

BACKENDS = ("auto", *MATCH.choices)
FLOATS = (torch.float32, torch.float16, torch.bfloat16)
INTS = (torch.int32, torch.int64)


def max_merges(n: torch.Tensor | int) -> torch.Tensor | int:
    """The most merges one matching step allows in a frame of ``n`` rows: its A rows without
    CLS, ``(n - 1) // 2`` (0 for n <= 2)."""
    return (n - 1).clamp_min(0) // 2 if isinstance(n, torch.Tensor) else max(n - 1, 0) // 2


def bipartite_match(
    metric: torch.Tensor,
    cu_seqlens: torch.Tensor,
    r: torch.Tensor,
    *,
    max_seqlen: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """ToMe bipartite soft matching inside each frame of a packed batch: which rows merge where.

    In frame f, with local row index j: A = the even j except j = 0 (CLS never merges), B = the
    odd j. Each A row's match is the B row of its frame with the highest cosine similarity
    ``<a, b> / sqrt(max(|a|^2 |b|^2, 1e-16))`` (fp32); the ``r[f]`` A rows whose match is most
    similar merge into it. Ties, both steps: the lower row wins (deterministic on every backend).

    Args:
        metric: float ``[T, D]`` (ToMe: the attention keys, mean over heads).
        cu_seqlens: int ``[N+1]``, the frames.
        r: int ``[N]``: merges per frame, each in ``[0, max_merges(n_f)]`` (ValueError
            otherwise; `haic_kernels.pruning.VisionMerge` clamps before calling).
        max_seqlen: the longest frame (computed if None: a device sync on CUDA).
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``.

    Returns int64 ``[T]``: each row's target (its match for a merged A row, else itself).
    Equality across backends: the same targets wherever the similarities that decide differ by
    more than fp32 rounding (the fast kernel sums the dot products in another order).
    """
    metric = check_tensor("metric", metric, dims=2, dtypes=FLOATS, shape_hint="[T, D]",
                          layout="contiguous")  # fmt: skip
    check_no_grad(OP, metric=metric)
    t = metric.shape[0]
    cu = check_cu_seqlens("cu_seqlens", cu_seqlens, t, metric.device, what="metric rows")
    check_tensor("r", r, dims=1, dtypes=INTS, device=metric.device)
    if r.shape[0] != cu.shape[0] - 1:
        raise ValueError(f"r: expected {cu.shape[0] - 1} entries (one per frame), got {r.shape[0]}")
    n = (cu[1:] - cu[:-1]).to(torch.long)
    check_values((r >= 0) & (r <= max_merges(n)),
                 "r: merges per frame must lie in [0, (n - 1) // 2] for a frame of n rows "
                 "(A rows without CLS)")  # fmt: skip
    longest = check_max_seqlen("max_seqlen", max_seqlen, cu, t)
    chosen = MATCH.resolve(backend, metric.device)
    return torch.ops.haic_kernels.token_merge_match(
        metric, cu, r.to(torch.int32).contiguous(), longest, chosen
    )


def merge_packed(
    x: torch.Tensor,
    sizes: torch.Tensor,
    target: torch.Tensor,
    *,
    kept: int | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Size-weighted merge of packed rows, compacted: ToMe's merge step.

    Args:
        x: ``[T, D]`` float32/float16/bfloat16.
        sizes: float32 ``[T]``, how many original tokens each row stands for; finite, > 0.
        target: int ``[T]`` from `bipartite_match`: row j goes into row ``target[j]``, which must
            target itself (a row that stays).
        kept: the number of rows that stay (the host knows it: rows minus merges); computed if
            None (a device sync on CUDA). Checked against ``target``.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``.

    Returns ``(merged [T', D] in x.dtype, sizes float32 [T'], row int64 [T])``: the rows that
    stay, in order; stayed row i is ``sum_{j: target[j]=i} sizes[j] x[j] / sum sizes[j]`` (fp32,
    summed in row order) and its size that
    sum (a row nothing merged into is copied, whatever its size); ``row[j]`` is the output row
    input row j went into (what the unmerge gathers).
    """
    x = check_tensor("x", x, dims=2, dtypes=FLOATS, shape_hint="[T, D]", layout="contiguous")
    check_no_grad(OP, x=x)
    t = x.shape[0]
    sizes = check_tensor("sizes", sizes, dims=1, dtypes=(torch.float32,), layout="contiguous")
    target = check_tensor("target", target, dims=1, dtypes=INTS, layout="contiguous")
    check_same_device(x=x, sizes=sizes, target=target)
    for name, v in (("sizes", sizes), ("target", target)):
        if v.shape[0] != t:
            raise ValueError(f"{name}: expected {t} entries (the rows of x), got {v.shape[0]}")
    check_values(torch.isfinite(sizes) & (sizes > 0), "sizes: every size must be finite and > 0")
    check_values((target >= 0) & (target < t), f"target: entries must lie in [0, {t})")
    tl_ = target.to(torch.long)
    stay = tl_ == torch.arange(t, device=x.device)
    msg = "target: every target must be a row that stays (target[target[j]] == target[j])"
    check_values(stay[tl_.clamp(0, max(t - 1, 0))] if t else stay, msg)
    if kept is None:
        kept = int(stay.sum())
    else:
        check_int("kept", kept, minimum=0, maximum=t)
        msg = f"kept: {kept} given, but target keeps another number of rows"
        check_values(stay.sum() == kept, msg)
    chosen = MERGE.resolve(backend, x.device)
    return torch.ops.haic_kernels.token_merge_merge(x, sizes, tl_.contiguous(), kept, chosen)


def patch_difference(
    frames: torch.Tensor,
    patch: int,
    *,
    cu_frames: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """How much each patch changed from the previous frame of its video (run-length tokens).

    Args:
        frames: uint8 ``[N, S, S, C]`` (RGB, channels last, as decoded), the frames of all videos
            back to back; ``S`` a multiple of ``patch``.
        patch: the patch size in pixels.
        cu_frames: int ``[B+1]``: video b holds frames ``cu_frames[b] .. cu_frames[b+1]`` (None:
            one video). No frame is compared across a video boundary.
        backend: ``"auto"`` | ``"torch"`` (a separate pass, not fused into patch_embed: it reads
            2 x 150 KB per 224 px frame pair, nothing next to a ViT's 2 TFLOP per frame).

    Returns int32 ``[N, (S / patch)^2]`` (row-major grid): ``max |frames[f] - frames[f-1]|`` over
    the patch's pixels and channels; `NO_PREVIOUS` (256) for a video's first frame.
    """
    frames = check_tensor("frames", frames, dims=4, dtypes=(torch.uint8,),
                          shape_hint="[N, S, S, C]", layout="contiguous")  # fmt: skip
    check_int("patch", patch, minimum=1)
    n, s, s2, _ = frames.shape
    if s != s2 or s % patch:
        raise ValueError(
            f"frames: expected square frames whose side is a multiple of patch={patch}, got "
            f"{tuple(frames.shape)}"
        )
    prev = previous_frames(cu_frames, n, frames.device)
    chosen = PATCH_DIFF.resolve(backend, frames.device)
    return torch.ops.haic_kernels.token_merge_patch_difference(frames, prev, patch, chosen)


# ---- the tower's own call --------------------------------------------------------------------
# `pruning.vision.merge_step` builds every argument itself (cu_seqlens, r and the new
# cu_seqlens from host counts, rows from the previous step), so the VALUE checks above (device
# asserts on CUDA: about 15 small launches per merging block, more than the kernels themselves)
# prove nothing there. This keeps the shape/dtype checks (host only) and skips the value
# checks; nothing else calls it.


def merge_step_unchecked(
    h: torch.Tensor,
    keys: torch.Tensor,
    sizes: torch.Tensor | None,
    cu_seqlens: torch.Tensor,
    cu_new: torch.Tensor,
    r: torch.Tensor,
    rows: torch.Tensor,
    max_seqlen: int,
    kept: int,
    longest_new: int,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`bipartite_match` + `merge_packed` + the unmerge map's step, fused, without value checks
    (see above): h [T, Dv], keys float [T, H, Dh] (unit stride in Dh; the metric is their mean
    over heads, ToMe's), sizes float32 [T] or None (all 1), cu_seqlens
    and cu_new int32 [N+1] (frame f: n_f rows, then n_f - r_f), r int32 [N], rows int64 [N, L]
    (the row of each position); ``kept`` = T - sum(r), ``longest_new`` the longest new frame.

    Returns (merged h [kept, Dv] in h.dtype, sizes float32 [kept], rows int64 [N, L]: each
    position's row after the merge), as ``merge_packed(h, sizes, target)`` with ``target =
    bipartite_match(keys.float().mean(1), cu_seqlens, r)`` and ``row[rows]``. Triton: four
    launches (the head mean, match, plan, merge)."""
    h = check_tensor("h", h, dims=2, dtypes=FLOATS, layout="contiguous")
    keys = check_tensor("keys", keys, dims=3, dtypes=FLOATS, layout="rows")
    if sizes is not None:
        sizes = check_tensor("sizes", sizes, dims=1, dtypes=(torch.float32,), layout="contiguous")
    cu_seqlens, cu_new, r = (
        check_tensor(name, v, dims=1, dtypes=(torch.int32,), layout="contiguous", device=h.device)
        for name, v in (("cu_seqlens", cu_seqlens), ("cu_new", cu_new), ("r", r))
    )
    rows = check_tensor("rows", rows, dims=2, dtypes=(torch.int64,), layout="contiguous")
    chosen = STEP.resolve(backend, h.device)
    return torch.ops.haic_kernels.token_merge_step(
        h, keys, sizes, cu_seqlens, cu_new, r, rows, max_seqlen, kept, longest_new, chosen
    )
