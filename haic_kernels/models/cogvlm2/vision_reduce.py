"""The reference vision tower with token reduction (`haic_kernels.pruning.vision`), one frame at
a time in stock torch: the oracle of the fast model's packed tower (`fast.vision_reduce`).

Per frame: the kept tokens (`StaticPatches`, from `patch_difference`'s reference), every block
as ``h = x + LN1(attn(x, key_bias=log size))``, ToMe's step between attention and MLP
(`bipartite_match_reference` / `merge_packed_reference` on that one frame), ``y = h + LN2(mlp(h))``;
then positions unmerged, and dropped patches filled from the previous frame, frame after frame.
"""

from __future__ import annotations

import torch
from torch import nn

from haic_kernels.ops.token_merge.reference import (
    bipartite_match_reference,
    merge_packed_reference,
    patch_difference_reference,
)
from haic_kernels.pruning.vision import VisionReduction

__all__ = ["reduced_tower_reference"]


def _keep(frames: torch.Tensor, threshold: int, patch: int, starts: set[int]) -> torch.Tensor:
    """bool [N, 1 + P]: CLS, a video's first frame, patches that changed by > threshold."""
    n = frames.shape[0]
    prev = torch.tensor([-1 if f in starts else f - 1 for f in range(n)])
    score = patch_difference_reference(frames, prev, patch)
    return torch.cat([torch.ones(n, 1, dtype=torch.bool), score > threshold], dim=1)


def reduced_tower_reference(
    vision: nn.Module,
    x: torch.Tensor,
    reduction: VisionReduction,
    frames: torch.Tensor,
    frames_per_video: list[int],
) -> tuple[torch.Tensor, list[int]]:
    """``vision`` (an `EVA2CLIPModel`) on embedded patches x [N, L, Dv] of ``frames`` (videos of
    ``frames_per_video`` frames, in order) -> (x [N, L, Dv], tokens per frame after the tower)."""
    v = vision.config.vision
    n, length, _ = x.shape
    starts, f0 = set(), 0
    for count in frames_per_video:
        starts.add(f0)
        f0 += count
    keep = torch.ones(n, length, dtype=torch.bool)
    if reduction.static is not None:
        if frames.dtype != torch.uint8:
            raise ValueError(f"StaticPatches: needs uint8 frames, got {frames.dtype}")
        keep = _keep(frames.cpu(), reduction.static.threshold, v.patch_size, starts)
    keep = keep.to(x.device)
    out = torch.empty_like(x)
    final = []
    for f in range(n):
        pos = keep[f].nonzero().squeeze(1)
        t, sizes = x[f, pos], torch.ones(pos.shape[0], dtype=torch.float32, device=x.device)
        row = torch.arange(pos.shape[0], device=x.device)  # local row of each kept position
        merged = False
        for i, layer in enumerate(vision.transformer.layers):
            bias = sizes.log()[None] if merged else None
            a, k = layer.attention(t[None], key_bias=bias, return_keys=True)
            h = t + layer.input_layernorm(a)[0]
            m = reduction.merge
            if m is not None and m.merges_at(i):
                r = min(m.r, max(h.shape[0] - 1, 0) // 2)
                cu = torch.tensor([0, h.shape[0]])
                target = bipartite_match_reference(k[0].float().mean(1), cu, torch.tensor([r]))
                h, sizes, moved = merge_packed_reference(h, sizes, target)
                row = moved[row]
                merged = merged or r > 0
            t = h + layer.post_attention_layernorm(layer.mlp(h))
        final.append(t.shape[0])
        out[f] = out[f - 1] if f not in starts else 0  # filled positions: the previous frame's
        out[f, pos] = t[row]
    return out, final
