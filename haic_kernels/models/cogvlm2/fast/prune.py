"""Applying a pruning stage to a `TokenBatch`: the kept tokens, packed, and their new batch.

A stage's `PruneResult` holds its keep mask over the padded layout ``[B, S]`` of the batch;
the batch's packed order is that layout's row-major order restricted to real tokens, so the
packed keep mask is ``keep[batch.row_col]``. The kept tokens keep their position ids; the routing
is rebuilt on their types (boi and eoi are never dropped, so it equals the original routing
restricted to the kept tokens). The new batch's host data are the stage's kept counts,
predicted from the layout alone by the policy (`PrunePolicy.kept`), never read back.
"""

from __future__ import annotations

import torch

from haic_kernels.ops.token_prune.api import compact
from haic_kernels.pruning import PrunePolicy, PruneResult, TokenCounts, TokenLayout

from ..config import CogVLM2Config
from .batch import TokenBatch

__all__ = ["apply", "kept_counts"]


def kept_counts(policy: PrunePolicy, counts: TokenCounts, layout: TokenLayout) -> TokenCounts:
    """The counts ``policy`` leaves of ``counts``: predicted, or, where an earlier per-video
    stage left a per-frame split to the scores, from ``layout``'s counts (one device read,
    before the stage runs)."""
    kept = policy.kept(counts)
    return kept if kept is not None else policy.kept(TokenCounts.from_layout(layout))


def apply(
    result: PruneResult,
    layout: TokenLayout,
    batch: TokenBatch,
    x: torch.Tensor,
    counts: TokenCounts,
    config: CogVLM2Config,
    backend: str,
) -> tuple[torch.Tensor, TokenBatch]:
    """(kept rows of x [T, ...] -> [T_kept, ...], the batch of the kept tokens)."""
    c = compact(x, result.keep[batch.row_col], cu_seqlens=batch.cu_seqlens,
                token_type_ids=batch.token_type_ids, position_ids=batch.position_ids,
                backend=backend)  # fmt: skip
    kept = TokenBatch.packed(batch.input_ids[c.indices], c.token_type_ids, c.position_ids,
                             c.cu_seqlens, counts, batch.max_position, config)  # fmt: skip
    return c.hidden, kept
