"""Shared pieces of the policies: candidate selection per video or per frame, CLS-score pooling,
the query rows of text-guided scoring."""

from __future__ import annotations

import torch

from haic_kernels.ops.token_prune.api import check_keep_ratio, keep_counts, segment_topk
from haic_kernels.pruning.layout import PATCH, TEXT, TokenLayout

__all__ = ["PER", "pool_cls_attention", "query_rows", "select_candidates"]

PER = ("video", "frame")


def check_per(per: object) -> str:
    if per not in PER:
        raise ValueError(f"per: expected 'video' or 'frame', got {per!r}")
    return str(per)


def select_candidates(
    layout: TokenLayout,
    scores: torch.Tensor,
    keep_ratio: float,
    per: str,
    *,
    full_first_frame: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """keep bool [B, S]: every non-patch real token, plus the top patches of each segment.

    ``scores`` float [B, S] (read at patch tokens only). Segments are each sequence's patches
    (``per="video"``) or each frame's remaining patches (``per="frame"``); a segment of n
    candidates keeps ``keep_counts(n, keep_ratio)`` = ceil(ratio * n) (>= 1 when n >= 1), ties
    to the earlier token. ``full_first_frame`` (per frame): each video's first frame keeps all
    its patches.
    """
    r = check_keep_ratio(keep_ratio)
    per = check_per(per)
    if tuple(scores.shape) != tuple(layout.role.shape):
        raise ValueError(
            f"scores: expected shape {tuple(layout.role.shape)}, got {tuple(scores.shape)}"
        )
    cand = layout.patch
    keep = layout.real & ~cand
    idx = cand.reshape(-1).nonzero().squeeze(1)  # sequence order, batch-major
    if idx.numel() == 0:
        return keep
    if per == "video":
        seg = idx // layout.role.shape[1]
        n_seg = layout.batch_size
    else:
        seg = layout.frame.reshape(-1)[idx]
        n_seg = layout.num_frames
    lens = torch.bincount(seg, minlength=n_seg)
    cu = torch.zeros(n_seg + 1, dtype=torch.int32, device=scores.device)
    cu[1:] = lens.cumsum(0)
    k = keep_counts(lens, r)
    if full_first_frame and per == "frame":
        first = torch.zeros(n_seg, dtype=torch.bool, device=scores.device)
        first[layout.cu_frames[:-1][layout.cu_frames[1:] > layout.cu_frames[:-1]]] = True
        k = torch.where(first, lens.to(torch.int32), k)
    flat = scores.reshape(-1)[idx].to(torch.float32)
    kept = segment_topk(flat, cu, k, max_seqlen=int(lens.max()), backend=backend)
    keep = keep.clone()
    keep.view(-1)[idx[kept]] = True
    return keep


def patch_scores_to_tokens(layout: TokenLayout, frame_scores: torch.Tensor) -> torch.Tensor:
    """[F, N] per-frame patch scores -> float32 [B, S] (NaN off the patches)."""
    f, n = layout.num_frames, layout.patches_per_frame
    if tuple(frame_scores.shape) != (f, n):
        raise ValueError(
            f"scores: expected [F={f}, N={n}] (frames x patch tokens), got "
            f"{tuple(frame_scores.shape)}"
        )
    out = torch.full(
        layout.role.shape, float("nan"), dtype=torch.float32, device=layout.role.device
    )
    cand = layout.role == PATCH
    out[cand] = frame_scores.to(torch.float32)[layout.frame[cand], layout.slot[cand] - 1]
    return out


def pool_cls_attention(cls_scores: torch.Tensor, *, has_cls: bool = True) -> torch.Tensor:
    """Vision-tower CLS attention [F, 1 + G*G] -> [F, (G/2)^2] per LM patch token.

    ``cls_scores`` are what ``attention(..., causal=False, key_scores=rows)`` returns with only
    the CLS row (query 0) of each frame chosen: the head-mean softmax probability CLS gives each
    key. Column 0 (CLS on itself) is dropped (``has_cls``); the G x G patch grid (row-major) is
    summed over the 2x2 blocks that the adapter's stride-2 conv turns into one LM token, in the
    conv's row-major output order.
    """
    if not isinstance(cls_scores, torch.Tensor) or cls_scores.dim() != 2:
        raise ValueError("cls_scores: expected a tensor [F, 1 + G*G]")
    s = cls_scores[:, 1:] if has_cls else cls_scores
    g = round(s.shape[1] ** 0.5)
    if g * g != s.shape[1] or g % 2:
        raise ValueError(f"cls_scores: {s.shape[1]} patch columns are not an even square grid")
    f = s.shape[0]
    grid = s.to(torch.float32).reshape(f, g // 2, 2, g // 2, 2)
    return grid.sum(dim=(2, 4)).reshape(f, (g // 2) ** 2)


def query_rows(layout: TokenLayout, query: str = "last") -> torch.Tensor:
    """bool [B, S]: the query rows whose attention scores the visual tokens (``key_scores``).

    ``"last"``: each sequence's last real token (FastV); ``"text"``: every text token after the
    sequence's last vision token (the question), or the last token when there is none after it.
    """
    if query not in ("last", "text"):
        raise ValueError(f"query: expected 'last' or 'text', got {query!r}")
    s = layout.role.shape[1]
    ar = torch.arange(s, device=layout.role.device).unsqueeze(0)
    last = ar == (layout.lengths - 1).unsqueeze(1)
    if query == "last":
        return last
    last_vis = torch.where(layout.vision, ar, -1).amax(1, keepdim=True)
    rows = (layout.role == TEXT) & (ar > last_vis)
    return rows | (last & ~rows.any(1, keepdim=True))
