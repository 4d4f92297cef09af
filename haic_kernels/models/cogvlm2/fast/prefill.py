"""THE prefill of `FastCogVLM2`: every batch shape and pruning mix runs through `prefill`.

1. embed the token ids; fill the vision rows: the frames encoded (the tower runs exactly once,
   with its CLS attention when a policy needs it) or ``vision_embeds``;
2. the before-LM pruning stages in order, each applied to the batch (`prune.apply`);
3. the LM layers on the packed tokens; at the in-LM stage's layer K the layer also returns key
   scores, the stage selects, and from layer K+1 on only its kept tokens go on;
4. logits of every token, or of each row's last one.

``sink(i, k, v, batch)`` receives each layer's keys/values ([T_i, Hkv, Dh] in ``batch``'s rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from haic_kernels.constants import VISION_TOKEN_TYPE
from haic_kernels.ops._common import trusted_values
from haic_kernels.pruning import PruneResult, TokenLayout, VisionReduction, plan_stages, plan_vision
from haic_kernels.pruning.vision import cu_frames_of

from ..reference import check_vision_inputs, vision_embed_rows
from .batch import TokenBatch
from .prune import apply, kept_counts

__all__ = ["PrefillOutput", "prefill"]

Sink = Callable[[int, torch.Tensor, torch.Tensor, TokenBatch], None]


@dataclass
class PrefillOutput:
    """``logits`` fp32 [T, V] (or [B, V]: each row's last token) of ``batch``, the batch the last
    layer ran on; ``stages``: each pruning stage's `PruneResult`, in order."""

    logits: torch.Tensor
    batch: TokenBatch
    stages: list[PruneResult]


def _vision_rows(
    model: nn.Module,
    batch: TokenBatch,
    frames: torch.Tensor | None,
    vision_embeds: torch.Tensor | None,
    want_cls: bool,
    reduction: VisionReduction | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(rows [num_vision_tokens, Dt] or None, pooled CLS scores [F, patches] or None)."""
    slots = sum(batch.counts.vision)
    check_vision_inputs(model.config, slots, frames, vision_embeds)
    if want_cls and frames is None:
        raise ValueError(
            "prune: a policy needs cls_scores (the vision tower's CLS attention): pass frames, "
            "not vision_embeds"
        )
    if reduction is not None and frames is None:
        raise ValueError(
            "prune: StaticPatches / VisionMerge run inside the vision tower: pass frames, not "
            "vision_embeds"
        )
    if frames is not None and slots:
        if reduction is None:
            return model.model.vision.encode(frames, want_cls)
        cu = cu_frames_of(batch.counts.vision, model.config.tokens_per_frame, frames.device)
        return model.model.vision.encode(frames, want_cls, reduction, cu)
    if vision_embeds is not None:
        return vision_embed_rows(vision_embeds, model.config.text.hidden_size, slots), None
    return None, None


def _fill_vision_rows(x: torch.Tensor, vis: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [T, D] with its vision slots (bool [T], as many as ``rows`` [N, D] has rows) taking the
    rows in order: a gather by the slots' running count, not boolean-mask indexing, whose
    output size depends on the data (a host sync on a GPU)."""
    src = (vis.cumsum(0) - 1).clamp_(min=0)
    return torch.where(vis[:, None], rows.to(device=x.device, dtype=x.dtype)[src], x)


def prefill(
    model: nn.Module,
    batch: TokenBatch,
    frames: torch.Tensor | None = None,
    vision_embeds: torch.Tensor | None = None,
    prune: object = None,
    *,
    sink: Sink | None = None,
    last_only: bool = False,
) -> PrefillOutput:
    """The prefill of `FastCogVLM2` ``model`` on ``batch`` (see the module docstring)."""
    cfg = model.config
    tpf, num_layers = cfg.tokens_per_frame, cfg.text.num_layers
    before, in_lm = plan_stages(prune, num_layers)
    reduction = plan_vision(prune, cfg.vision.num_layers)
    want_cls = any("cls_scores" in p.needs for p in before)
    rows, cls = _vision_rows(model, batch, frames, vision_embeds, want_cls, reduction)
    x = model.model.embed_tokens(batch.input_ids)
    if rows is not None:
        x = _fill_vision_rows(x, batch.token_type_ids == VISION_TOKEN_TYPE, rows)

    stages: list[PruneResult] = []
    counts, layout = batch.counts, None
    if before or in_lm:
        types = batch.unpack(batch.token_type_ids, 0)
        layout = TokenLayout.from_token_types(types, tpf, batch.seqlens.long())
    feats = rows.view(-1, tpf, rows.shape[-1]) if rows is not None else None
    for policy in before:
        res = policy(layout, vision_embeds=feats, cls_scores=cls, num_layers=num_layers)
        if res.vision_embeds is not None:  # merged rows go where their tokens are
            feats = res.vision_embeds.view_as(feats)
            cur = layout.vision
            idx = (layout.frame * tpf + layout.slot)[cur]
            x = x.index_put((cur[batch.row_col],), res.vision_embeds[idx].to(x.dtype))
        counts = kept_counts(policy, counts, layout)
        x, batch = apply(res, layout, batch, x, counts, cfg, model.backend)
        layout = res.layout_after
        stages.append(res)
    k_layer = in_lm.layer if in_lm is not None else -1
    after_lm = kept_counts(in_lm, counts, layout) if in_lm is not None else None

    # The batch's offsets, positions and lengths were checked once when it was built (and
    # every stage makes its own): no layer checks their values again.
    with trusted_values():
        for i, layer in enumerate(model.model.layers):
            if in_lm is not None and i == k_layer + 1:
                x, batch = apply(stages[-1], layout, batch, x, after_lm, cfg, model.backend)
                layout = stages[-1].layout_after
            if i == k_layer:
                out = layer(x, batch, key_scores=in_lm.query_rows(layout)[batch.row_col])
                scores = out.scores.new_zeros(layout.role.shape)
                scores[batch.row_col] = out.scores
                stages.append(in_lm(layout, lm_scores=scores, num_layers=num_layers))
            else:
                out = layer(x, batch)
            x = out.x
            if sink is not None:
                sink(i, out.k, out.v, batch)
    if last_only:
        x = x[batch.last_index]
    return PrefillOutput(model.logits(x), batch, stages)
