"""token_prune in plain PyTorch: the oracle of every fast backend (runs anywhere, CPU included).

Written for clarity, not speed: loops over segments where that reads more plainly. ``acc`` is the
accumulation dtype (float32 by default, float64 for the tests' high-precision oracle).
"""

from __future__ import annotations

import torch

# Denominator floor of the cosine: cos = <a, b> / sqrt(max(|a|^2 |b|^2, EPS^2)).
COS_EPS = 1e-8


def frame_cosine_scores_reference(
    x: torch.Tensor, prev: torch.Tensor, first_score: float, acc: torch.dtype = torch.float32
) -> torch.Tensor:
    """x [F, N, D], prev int [F] (index of the previous frame of the same video, -1 for a
    video's first frame) -> float32 [F, N]: ``1 - cos(x[f, n], x[prev[f], n])``, or
    ``first_score`` where prev is -1."""
    xf = x.to(acc)
    p = prev.to(torch.long)
    other = xf[p.clamp_min(0)]
    dot = (xf * other).sum(-1)
    n2 = (xf * xf).sum(-1) * (other * other).sum(-1)
    cos = dot / n2.clamp_min(COS_EPS * COS_EPS).sqrt()
    score = 1.0 - cos
    score = torch.where((p < 0).unsqueeze(1), torch.full_like(score, first_score), score)
    return score.to(torch.float32)


def nearest_kept_reference(
    x: torch.Tensor, keep: torch.Tensor, acc: torch.dtype = torch.float32
) -> torch.Tensor:
    """x [F, N, D], keep bool [F, N] -> int32 [F, N]: per token, the index (within its frame) of
    the kept token of the same frame with the highest cosine similarity, ties to the lower index;
    a kept token maps to itself; -1 in a frame with no kept token."""
    if x.shape[1] == 0:  # argmax needs a non-empty dim
        return torch.empty(x.shape[:2], dtype=torch.int32, device=x.device)
    xf = x.to(acc)
    norm2 = (xf * xf).sum(-1)  # [F, N]
    gram = torch.matmul(xf, xf.transpose(1, 2))  # [F, N, N]
    denom = (norm2.unsqueeze(2) * norm2.unsqueeze(1)).clamp_min(COS_EPS * COS_EPS).sqrt()
    cos = gram / denom
    cos = cos.masked_fill(~keep.unsqueeze(1), float("-inf"))
    # torch.max returns the first maximal index on ties (documented for CPU and CUDA).
    best = cos.argmax(dim=2)
    n = x.shape[1]
    self_idx = torch.arange(n, device=x.device).expand_as(best)
    out = torch.where(keep, self_idx, best)
    out = torch.where(keep.any(dim=1, keepdim=True), out, torch.full_like(out, -1))
    return out.to(torch.int32)


def segment_topk_reference(
    scores: torch.Tensor, cu_seqlens: torch.Tensor, k: torch.Tensor
) -> torch.Tensor:
    """scores float [T], cu_seqlens int [G+1], k int [G] -> bool [T]: in each segment
    ``[cu[g], cu[g+1])`` the ``k[g]`` highest scores, ties to the lower index."""
    keep = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    cu = cu_seqlens.tolist()
    ks = k.tolist()
    for g in range(len(ks)):
        lo, hi = cu[g], cu[g + 1]
        kk = min(max(int(ks[g]), 0), hi - lo)
        if kk == 0:
            continue
        seg = scores[lo:hi]
        # A stable descending sort puts equal scores in index order.
        order = torch.sort(seg, descending=True, stable=True).indices[:kk]
        keep[lo + order] = True
    return keep


def gather_rows_reference(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [R, ...], index int [K] -> x[index] ([K, ...])."""
    return x[index.to(torch.long)]


def merge_weighted_reference(
    x: torch.Tensor, target: torch.Tensor, sizes: torch.Tensor, acc: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [F, N, D], target int [F, N], sizes float [F, N] -> (merged [F, N, D] in x.dtype,
    new sizes float32 [F, N]).

    A row i with ``target[f, i] == i`` is a destination: it becomes the size-weighted mean of
    every row j of its frame with ``target[f, j] == i`` (itself included), and its size their
    sum. Every other row is copied unchanged and its new size is 0 (it was merged away).
    """
    f, n, d = x.shape
    t = target.to(torch.long)
    w = sizes.to(acc)
    xf = x.to(acc)
    base = (torch.arange(f, device=x.device) * n).unsqueeze(1)
    dest = (t + base).reshape(-1)
    num = torch.zeros(f * n, d, dtype=acc, device=x.device)
    num.index_add_(0, dest, (xf * w.unsqueeze(-1)).reshape(f * n, d))
    den = torch.zeros(f * n, dtype=acc, device=x.device)
    den.index_add_(0, dest, w.reshape(-1))
    num, den = num.view(f, n, d), den.view(f, n)
    is_dest = t == torch.arange(n, device=x.device)
    merged = torch.where(is_dest.unsqueeze(-1), num / den.clamp_min(1e-30).unsqueeze(-1), xf)
    new_sizes = torch.where(is_dest, den, torch.zeros_like(den))
    return merged.to(x.dtype), new_sizes.to(torch.float32)
