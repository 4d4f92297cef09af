"""Visual-token pruning policies for CogVLM2-style video LMs, on the ``token_prune`` kernels.

* `temporal` (before the LM): drop patches that barely change from the previous frame.
* `salient` (before the LM): keep the patches the vision tower's CLS attends to; optionally
  merge the dropped ones into their most similar kept patch (size-weighted).
* `text_guided` (inside the LM at layer K): keep the patches the text attends to at layer K;
  drop the rest from the hidden states and KV cache of later layers.
* `StaticPatches` (before the vision tower) and `VisionMerge` (ToMe, inside it): fewer tokens
  where the time is; every position is restored after the tower (`haic_kernels.pruning.vision`).

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
from haic_kernels.pruning.protocol import (
    BEFORE_LM,
    BEFORE_VISION,
    IN_LM,
    IN_VISION,
    PrunePolicy,
    TokenCounts,
)
from haic_kernels.pruning.result import PrunePlan, PruneResult, compose
from haic_kernels.pruning.select import pool_cls_attention, query_rows
from haic_kernels.pruning.vision import StaticPatches, VisionMerge, VisionReduction, plan_vision

__all__ = [
    "BEFORE_LM",
    "BEFORE_VISION",
    "IN_LM",
    "IN_VISION",
    "Compose",
    "PrunePlan",
    "PrunePolicy",
    "PruneResult",
    "Salient",
    "StaticPatches",
    "Temporal",
    "TextGuided",
    "TokenCounts",
    "TokenLayout",
    "VisionMerge",
    "VisionReduction",
    "compose",
    "plan_stages",
    "plan_vision",
    "pool_cls_attention",
    "query_rows",
    "salient",
    "temporal",
    "text_guided",
]
