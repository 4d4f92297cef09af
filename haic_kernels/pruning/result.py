"""What a pruning policy returns (`PruneResult`), how stages compose (`PrunePlan`), and how the
result is applied: compaction of hidden states / KV rows, model inputs of the kept tokens."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from haic_kernels.constants import VISION_TOKEN_TYPE
from haic_kernels.ops.token_prune.api import Compacted, compact
from haic_kernels.pruning.layout import TokenLayout
from haic_kernels.tokens import build_position_ids

__all__ = ["PrunePlan", "PruneResult", "compose"]


@dataclass
class PruneResult:
    """One pruning stage over a padded batch [B, S] (the sequence as this stage sees it).

    ``keep`` bool [B, S]: True = the token stays (text, boi and eoi always; padding never).
    ``keep_from_layer``: 0 = the tokens are dropped before the LM; K > 0 = layers 0..K-1 see
    every token and layers K.. (hidden states and KV cache) only the kept ones.
    ``scores`` float32 [B, S]: the policy's score of each candidate (NaN for non-candidates).
    ``vision_embeds`` / ``sizes``: with merging, the new vision rows [num_vision_tokens, D] (the
    input's rows, kept rows replaced by their merged values) and each token's size [B, S]
    (how many original tokens it stands for; 0 for dropped ones).
    ``layout``: roles and frames of this stage's input; `layout_after` is that of its output.
    """

    keep: torch.Tensor
    layout: TokenLayout
    policy: str
    keep_from_layer: int = 0
    scores: torch.Tensor | None = None
    vision_embeds: torch.Tensor | None = None
    sizes: torch.Tensor | None = None

    @property
    def kept_per_sequence(self) -> torch.Tensor:
        """int64 [B]."""
        return self.keep.sum(1)

    @property
    def cu_seqlens(self) -> torch.Tensor:
        """int32 [B+1] of the kept sequences (varlen attention after compaction)."""
        cu = torch.zeros(self.keep.shape[0] + 1, dtype=torch.int32, device=self.keep.device)
        cu[1:] = self.kept_per_sequence.cumsum(0)
        return cu

    @property
    def indices(self) -> torch.Tensor:
        """int64 [T_kept]: kept rows of the flattened [B*S] input, in sequence order."""
        return self.keep.reshape(-1).nonzero().squeeze(1)

    @property
    def layout_after(self) -> TokenLayout:
        return self.layout.select(self.keep)

    def compact(
        self,
        hidden: torch.Tensor,
        *,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv: Sequence[torch.Tensor] = (),
        backend: str = "auto",
    ) -> Compacted:
        """`haic_kernels.ops.token_prune.compact` with this stage's keep mask ([B, S, ...])."""
        return compact(
            hidden,
            self.keep,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            kv=kv,
            backend=backend,
        )

    def model_inputs(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        *,
        vision_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The kept tokens as keyword arguments of a model call (a before-LM stage, equal kept
        counts per row): ``input_ids``, ``token_type_ids``, ``position_ids`` (the ORIGINAL ids,
        from `build_position_ids` of the full sequence when not given) and ``vision_embeds``
        (the kept vision rows, merged values if this stage merged)."""
        counts = self.kept_per_sequence
        if bool((counts != counts[0]).any()):
            raise ValueError(
                f"model_inputs: rows keep different numbers of tokens {counts.tolist()}; use "
                "compact() (packed varlen) or one row at a time"
            )
        if tuple(input_ids.shape) != tuple(self.keep.shape):
            raise ValueError(f"input_ids: expected shape {tuple(self.keep.shape)}")
        if position_ids is None:
            position_ids = build_position_ids(token_type_ids)
        b, n = self.keep.shape[0], int(counts[0])
        out = {
            "input_ids": input_ids[self.keep].view(b, n),
            "token_type_ids": token_type_ids[self.keep].view(b, n),
            "position_ids": position_ids[self.keep].view(b, n),
        }
        rows = self.vision_embeds if self.vision_embeds is not None else vision_embeds
        if rows is not None:
            rows = rows.reshape(-1, rows.shape[-1])
            vis = token_type_ids == VISION_TOKEN_TYPE
            out["vision_embeds"] = rows[self.keep[vis]]
        return out


@dataclass
class PrunePlan:
    """Stages applied one after the other; stage i's keep refers to stage i-1's output."""

    stages: list[PruneResult] = field(default_factory=list)

    def final_keep(self) -> torch.Tensor:
        """bool [B, S0] over the ORIGINAL sequence: tokens that survive every stage."""
        if not self.stages:
            raise ValueError("final_keep: the plan has no stage")
        keep = self.stages[0].keep.clone()
        for st in self.stages[1:]:
            # Scatter stage keep (left-aligned kept tokens of the previous output) back.
            for b in range(keep.shape[0]):
                pos = keep[b].nonzero().squeeze(1)
                keep[b, pos] = st.keep[b, : pos.shape[0]]
        return keep


def compose(*stages: PruneResult) -> PrunePlan:
    """Chain stages (e.g. temporal before the LM, then text-guided at layer K).

    Checks that each stage's layer is not earlier than the previous one's and that each stage's
    input is the previous stage's output (same batch size and kept counts).
    """
    if not stages:
        raise ValueError("compose: expected at least one PruneResult")
    for prev, nxt in itertools.pairwise(stages):
        if nxt.keep_from_layer < prev.keep_from_layer:
            raise ValueError(
                f"compose: stage {nxt.policy!r} (layer {nxt.keep_from_layer}) cannot follow "
                f"{prev.policy!r} (layer {prev.keep_from_layer})"
            )
        if not torch.equal(nxt.layout.lengths, prev.kept_per_sequence):
            raise ValueError(
                f"compose: stage {nxt.policy!r} was computed on sequences of lengths "
                f"{nxt.layout.lengths.tolist()}, but {prev.policy!r} keeps "
                f"{prev.kept_per_sequence.tolist()}"
            )
    return PrunePlan(list(stages))
