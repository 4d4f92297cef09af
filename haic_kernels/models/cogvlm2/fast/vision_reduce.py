"""The fast vision tower with token reduction (`haic_kernels.pruning.vision`): packed frames.

After `StaticPatches` (or with `VisionMerge` alone) frames hold different token counts, so every
block runs on the packed rows [T, Dv]: varlen attention with ``cu_seqlens`` over frames and
ToMe's proportional attention (``key_bias = log(size)``), the merge between the attention and
the MLP half of the block (`FastVisionLayer.attention_residual` / ``mlp_residual``), and after
the last block the unmerge/fill back to [N, 1 + g*g, Dv] for ``conv_compress``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from haic_kernels.ops._common import trusted_values
from haic_kernels.pruning.vision import (
    TowerTokens,
    VisionReduction,
    merge_plans,
    merge_step,
    pack,
    restore,
    restore_scores,
    static_keep,
)

__all__ = ["run_reduced_tower"]


def run_reduced_tower(
    vision: nn.Module,
    x: torch.Tensor,
    reduction: VisionReduction,
    frames: torch.Tensor,
    cu_frames: torch.Tensor | None = None,
    cls_scores: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, TowerTokens]:
    """``vision`` (a `FastEVA2CLIPModel`) on embedded patches x [N, L, Dv] of ``frames`` (video
    b: frames ``cu_frames[b] .. cu_frames[b+1]``) -> (x [N, L, Dv], with ``cls_scores`` the last
    block's CLS attention per position float32 [N, L] (`restore_scores`), the final
    `TowerTokens` (its ``trace``: the rows each block ran))."""
    cfg = vision.config.vision
    keep = None
    if reduction.static is not None:
        keep = static_keep(frames, reduction.static.threshold, cfg.patch_size, cu_frames)
    tok = pack(x, keep)
    merge = reduction.merge
    layers = vision.transformer.layers
    # Every block's counts are known now: one host-to-device copy for the whole tower.
    plans = [None] * len(layers)
    if merge is not None:
        plans = merge_plans(tok.lengths, merge, len(layers), x.device)
    scores_out = None
    # Offsets, lengths and the key bias are the tower's own (`pack`, `merge_step`): the ops
    # below check no values (each check would launch a few kernels in every block).
    with trusted_values():
        for i, layer in enumerate(layers):
            rows = None
            if cls_scores and i == len(layers) - 1:
                rows = torch.zeros(tok.x.shape[0], dtype=torch.bool, device=x.device)
                rows[tok.cu_seqlens[:-1].long()] = True
            h, k, scores = layer.attention_residual(
                tok.x, rows, cu_seqlens=tok.cu_seqlens, max_seqlen=tok.max_seqlen,
                key_bias=tok.key_bias,
            )  # fmt: skip
            if scores is not None:
                scores_out = restore_scores(tok, scores)
            attn = (h.shape[0], sum(n * n for n in tok.lengths))
            if merge is not None and merge.merges_at(i):
                tok = merge_step(tok, h, k, merge.r, backend=vision.backend, plan=plans[i])
            else:
                tok = replace(tok, x=h)
            tok.trace.append((*attn, tok.x.shape[0]))
            tok = replace(tok, x=layer.mlp_residual(tok.x))
    return restore(tok, cfg.num_positions), scores_out, tok
