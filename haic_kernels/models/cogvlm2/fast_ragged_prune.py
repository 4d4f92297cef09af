"""Pruning (``prune=``) of ragged batches for `FastCogVLM2`: rows that keep different counts.

Used for ragged prompts (`fast_ragged`) with ``prune=``, and for rows of equal length whose
rows keep different numbers of tokens (videos with different frame counts, a per-video keep
ratio), where the dense path (one [B, S] tensor) cannot hold the kept tokens.

The rows are held right-padded [B, S] with their lengths while the before-LM policies run
(`TokenLayout` takes the lengths, so every policy sees the ragged batch as it is); each stage's
kept tokens are gathered with `token_prune.compact` (kept tokens keep their ORIGINAL position
ids) and re-padded to the kept lengths. The LM then runs packed ([1, T, D], ``cu_seqlens``,
varlen attention) with `Routing` built from the kept types and ``cu_seqlens``. A `TextGuided`
stage scores at layer K on the packed tokens (``key_scores``), selects on the padded layout,
and compacts the packed hidden states (``compact`` with ``cu_seqlens``); the keys/values of
layers K+1.. then hold only the kept tokens of each row (``kv_sink`` gets each layer's row
lengths). Each row decodes from its own kept length (`fast_generate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from haic_kernels.ops.expert_linear import Routing
from haic_kernels.ops.token_prune.api import compact
from haic_kernels.pruning import PruneResult, Salient, TokenLayout

from .fast_ragged import Packed, pack_rows
from .fast_ragged import unpack_rows as _unpack

__all__ = ["PrunedPacked", "UnequalKeep", "run_pruned_packed"]


class UnequalKeep(ValueError):
    """The dense path met rows that keep different numbers of tokens (the caller may rerun
    the batch through `run_pruned_packed`)."""


@dataclass
class PrunedPacked:
    """What `run_pruned_packed` returns.

    ``logits`` fp32 packed [T_kept, V] (or [B, V], each row's last token, with ``last_only``);
    ``lengths`` host ints [B], each row's kept length at the last layer; ``last_position``
    int64 [B], each row's last position id; ``stages``: the `PruneResult` of every stage
    (padded [B, S] keep masks over that stage's input rows)."""

    logits: torch.Tensor
    lengths: list[int]
    last_position: torch.Tensor
    stages: list[PruneResult]

    def unpack(self) -> torch.Tensor:
        """[B, max kept, V], NaN past each row's kept length."""
        return _unpack(self.logits, self.lengths, float("nan"))


def _padded(p: Packed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, types, positions) [B, S] right-padded with 0 (language, position 0)."""
    return tuple(_unpack(t, p.lengths, 0) for t in (p.input_ids, p.token_type_ids, p.position_ids))


def _fields(c) -> tuple:
    """(hidden [T, D], types [T], positions [T], cu_seqlens, max_seqlen) of a `Compacted`."""
    return c.hidden, c.token_type_ids, c.position_ids, c.cu_seqlens, c.max_seqlen


def run_pruned_packed(
    model,
    rows: list[tuple[torch.Tensor, torch.Tensor]],
    frames: torch.Tensor | None,
    vision_embeds: torch.Tensor | None,
    prune: object,
    *,
    kv_sink=None,
    last_only: bool = False,
) -> PrunedPacked:
    """The prefill of `FastCogVLM2` ``model`` on ``rows`` (ids [S_b], types [S_b]) with the
    policies ``prune``; rows may differ in length and in what they keep.

    ``kv_sink(i, k, v, lengths)`` gets layer i's packed keys/values [1, Hkv, T_i, Dh] and the
    rows' lengths (host ints) at that layer (shorter from a TextGuided layer K+1 on)."""
    from .fast_model import _split_policies

    cfg = model.config
    tpf = cfg.tokens_per_frame
    before, lm_policy = _split_policies(prune, cfg.text.num_layers)
    p = pack_rows(rows, cfg.text.vocab_size)
    ids, types, pos = _padded(p)
    lens = torch.tensor(p.lengths, dtype=torch.long, device=ids.device)
    layout = TokenLayout.from_token_types(types, tpf, lens)
    vis = layout.vision
    want_cls = any(isinstance(q, Salient) for q in before)
    vrows, cls = model._vision_rows(int(vis.sum()), frames, vision_embeds, want_cls)
    x = model.model.embed_tokens(ids)  # [B, S, D], padding rows are never kept
    if vrows is not None:
        x = x.index_put((vis,), vrows.to(device=x.device, dtype=x.dtype))
    max_pos = cfg.text.max_position_embeddings
    if int(p.position_ids.max()) >= max_pos:
        raise ValueError(
            f"position_ids: ids up to {int(p.position_ids.max())} exceed "
            f"max_position_embeddings={max_pos} (input_ids too long for this config)"
        )
    feats = vrows.view(-1, tpf, vrows.shape[-1]) if vrows is not None else None

    stages: list[PruneResult] = []
    for policy in before:
        res = policy(layout, vision_embeds=feats, cls_scores=cls)
        if res.vision_embeds is not None:  # merged rows: put them where their tokens are
            feats = res.vision_embeds.view_as(feats)
            cur = layout.vision
            idx = layout.frame[cur] * tpf + layout.slot[cur]
            x = x.index_put((cur,), res.vision_embeds[idx].to(x.dtype))
        c = res.compact(x, token_type_ids=types, position_ids=pos, backend=model.backend)
        kept = [int(n) for n in res.kept_per_sequence.tolist()]
        x, types, pos = (_unpack(t, kept, 0) for t in (c.hidden, c.token_type_ids, c.position_ids))
        layout = res.layout_after
        stages.append(res)

    # Pack the (kept) rows: [T, ...] in sequence order, batch-major, with cu_seqlens.
    c = compact(x, layout.real, token_type_ids=types, position_ids=pos, backend=model.backend)
    x, types, pos, cu, max_s = _fields(c)
    experts = 2 if cfg.vision_expert else 1
    route = Routing.from_token_types(types, experts, cu_seqlens=cu)
    lengths = [int(n) for n in layout.lengths.tolist()]
    k_layer = lm_policy.layer if lm_policy is not None else -1
    for i, layer in enumerate(model.model.layers):
        if lm_policy is not None and i == k_layer + 1:
            st = stages[-1]
            keep = st.keep[layout.real]  # padded [B, S'] -> packed [T] (same order)
            c = compact(x, keep, cu_seqlens=cu, token_type_ids=types, position_ids=pos,
                        backend=model.backend)  # fmt: skip
            x, types, pos, cu, max_s = _fields(c)
            route = Routing.from_token_types(types, experts, cu_seqlens=cu)
            layout = st.layout_after
            lengths = [int(n) for n in layout.lengths.tolist()]
        x = x.unsqueeze(0)
        kw = dict(routing=route, cu_seqlens=cu, max_seqlen=max_s)
        if i == k_layer:  # x [1, T, D]
            rows_q = lm_policy.query_rows(layout)[layout.real]
            x, (k, v), scores = layer(x, None, pos[None], None, key_scores=rows_q[None], **kw)
            padded = torch.zeros(layout.role.shape, dtype=scores.dtype, device=scores.device)
            padded[layout.real] = scores[0]
            res = lm_policy(layout, num_layers=cfg.text.num_layers, lm_scores=padded)
            stages.append(res)
        else:
            x, (k, v) = layer(x, None, pos[None], None, **kw)
        if kv_sink is not None:
            kv_sink(i, k, v, lengths)
        x = x[0]
    last = cu[1:].to(torch.long) - 1
    if last_only:
        x = x[last]
    logits = model.lm_head(model.model.norm(x)).float()
    return PrunedPacked(logits, lengths, pos[last], stages)
