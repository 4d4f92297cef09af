"""token_merge in plain PyTorch: the oracle of the fast backends and the "torch" backend.

Written for clarity: `bipartite_match_reference` loops over frames, one small matrix each.
"""

from __future__ import annotations

import torch

from haic_kernels.ops.token_merge.format import NO_PREVIOUS

# Denominator floor of the cosine (as token_prune's): <a, b> / sqrt(max(|a|^2 |b|^2, EPS^2)).
COS_EPS = 1e-8


def bipartite_match_reference(
    metric: torch.Tensor, cu_seqlens: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """metric float [T, D], cu_seqlens int [N+1], r int [N] -> target int64 [T].

    In frame f (rows ``cu[f] .. cu[f+1]``, local index j): set A = even j except j = 0 (the CLS
    row), set B = odd j. Each A row's match is the B row of highest cosine (fp32; the lower
    row on ties); the ``r[f]`` A rows with the highest match (the lower row on ties) merge:
    ``target`` is their match, every other row's target is itself.
    """
    t = metric.shape[0]
    target = torch.arange(t, dtype=torch.int64, device=metric.device)
    cu = cu_seqlens.tolist()
    for f, rf in enumerate(r.tolist()):
        lo, hi = cu[f], cu[f + 1]
        if rf <= 0:
            continue
        m = metric[lo:hi].to(torch.float32)
        a, b = m[2::2], m[1::2]  # A without CLS, B
        dot = a @ b.t()
        n2 = (a * a).sum(-1)[:, None] * (b * b).sum(-1)[None, :]
        cos = dot / n2.clamp_min(COS_EPS * COS_EPS).sqrt()
        best, match = cos.max(dim=1)  # the first maximum on ties (documented)
        chosen = torch.sort(best, descending=True, stable=True).indices[:rf]
        target[lo + 2 + 2 * chosen] = lo + 1 + 2 * match[chosen]
    return target


def merge_packed_reference(
    x: torch.Tensor, sizes: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [T, D], sizes float32 [T], target int [T] (every target is a row that targets itself)
    -> (merged [T', D] in x.dtype, sizes float32 [T'], row int64 [T]).

    The rows that target themselves stay, in order (T' of them); stayed row i becomes
    ``sum_{j: target[j] = i} sizes[j] x[j] / sum sizes[j]`` (fp32, summed in row order; copied
    when nothing merged into it) and its size that sum; ``row[j]``: the output row that input
    row j went into."""
    t = target.to(torch.long)
    stay = t == torch.arange(x.shape[0], device=x.device)
    w = sizes.to(torch.float32)
    num = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    num.index_add_(0, t, x.to(torch.float32) * w[:, None])
    den = torch.zeros_like(w).index_add_(0, t, w)
    count = torch.zeros(x.shape[0], dtype=torch.long, device=x.device).index_add_(
        0, t, torch.ones_like(t)
    )
    out_row = torch.cumsum(stay.to(torch.long), 0) - 1
    merged = (num[stay] / den[stay][:, None]).to(x.dtype)
    # A row nothing merged into is copied (s * x / s need not round back to x).
    merged = torch.where((count[stay] == 1)[:, None], x[stay], merged)
    return merged, den[stay], out_row[t]


def merge_step_reference(
    h: torch.Tensor,
    keys: torch.Tensor,
    sizes: torch.Tensor | None,
    cu_seqlens: torch.Tensor,
    r: torch.Tensor,
    rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ToMe step of the packed vision tower: `bipartite_match_reference` on the metric
    ``keys.to(float32).mean(1)`` (keys [T, H, Dh]), then
    `merge_packed_reference` of h [T, Dv] (``sizes`` None: all 1); ``rows`` int [N, L] (each
    position's row) -> (merged h, sizes float32, rows int64 [N, L] after the step)."""
    if sizes is None:
        sizes = torch.ones(h.shape[0], dtype=torch.float32, device=h.device)
    target = bipartite_match_reference(keys.to(torch.float32).mean(dim=1), cu_seqlens, r)
    merged, new_sizes, row = merge_packed_reference(h, sizes, target)
    return merged, new_sizes, row[rows]


def patch_difference_reference(
    frames: torch.Tensor, prev: torch.Tensor, patch: int
) -> torch.Tensor:
    """frames uint8 [N, S, S, C], prev int [N] (-1: none) -> int32 [N, (S/patch)^2]: per patch
    (row-major grid), ``max |frames[f] - frames[prev[f]]|`` over its pixels and channels;
    `NO_PREVIOUS` where ``prev[f] < 0``."""
    n, s, _, c = frames.shape
    g = s // patch
    p = prev.to(torch.long)
    diff = (frames.to(torch.int16) - frames[p.clamp_min(0)].to(torch.int16)).abs()
    score = diff.view(n, g, patch, g, patch, c).amax(dim=(2, 4, 5)).reshape(n, g * g)
    score = score.to(torch.int32)
    return torch.where((p < 0)[:, None], torch.full_like(score, NO_PREVIOUS), score)
