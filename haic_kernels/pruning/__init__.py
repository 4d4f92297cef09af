"""Visual-token pruning policies for CogVLM2-style video LMs, on the ``token_prune`` kernels.

* `temporal` (before the LM): drop patches that barely change from the previous frame.
* `salient` (before the LM): keep the patches the vision tower's CLS attends to; optionally
  merge the dropped ones into their most similar kept patch (size-weighted).
* `text_guided` (inside the LM at layer K): keep the patches the text attends to at layer K;
  drop the rest from the hidden states and KV cache of later layers.

Each returns a `PruneResult`; `compose` chains them into a `PrunePlan`. The policy objects
(`Temporal`, `Salient`, `TextGuided`, `Compose`) are the configuration a model's ``prune=``
option holds; they follow the `PrunePolicy` protocol (where a stage runs, what it needs, how
many tokens it keeps), so a model runs any policy without knowing its class.
`haic_kernels.testing.prune_scores` computes the scores from the reference model (the oracle).
Imports: ops and `tokens` only.
"""

from haic_kernels.pruning.layout import TokenLayout
from haic_kernels.pruning.policies import (
    Compose,
    Salient,
    Temporal,
    TextGuided,
    plan_stages,
    salient,
    temporal,
    text_guided,
)
from haic_kernels.pruning.protocol import BEFORE_LM, IN_LM, PrunePolicy, TokenCounts
from haic_kernels.pruning.result import PrunePlan, PruneResult, compose
from haic_kernels.pruning.select import pool_cls_attention, query_rows

__all__ = [
    "BEFORE_LM",
    "IN_LM",
    "Compose",
    "PrunePlan",
    "PrunePolicy",
    "PruneResult",
    "Salient",
    "Temporal",
    "TextGuided",
    "TokenCounts",
    "TokenLayout",
    "compose",
    "plan_stages",
    "pool_cls_attention",
    "query_rows",
    "salient",
    "temporal",
    "text_guided",
]
