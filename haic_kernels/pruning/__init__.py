"""Visual-token pruning policies for CogVLM2-style video LMs, on the ``token_prune`` kernels.

* `temporal` (before the LM): drop patches that barely change from the previous frame.
* `salient` (before the LM): keep the patches the vision tower's CLS attends to; optionally
  merge the dropped ones into their most similar kept patch (size-weighted).
* `text_guided` (inside the LM at layer K): keep the patches the text attends to at layer K;
  drop the rest from the hidden states and KV cache of later layers.

Each returns a `PruneResult`; `compose` chains them into a `PrunePlan`. The policy objects
(`Temporal`, `Salient`, `TextGuided`, `Compose`) are the configuration a model's ``prune=``
option holds; `reference_scores` computes the scores from the reference model (the oracle).
"""

from haic_kernels.pruning.layout import TokenLayout
from haic_kernels.pruning.policies import (
    Compose,
    Salient,
    Temporal,
    TextGuided,
    salient,
    temporal,
    text_guided,
)
from haic_kernels.pruning.result import PrunePlan, PruneResult, compose, rebuild_routing
from haic_kernels.pruning.select import pool_cls_attention, query_rows

__all__ = [
    "Compose",
    "PrunePlan",
    "PruneResult",
    "Salient",
    "Temporal",
    "TextGuided",
    "TokenLayout",
    "compose",
    "pool_cls_attention",
    "query_rows",
    "rebuild_routing",
    "salient",
    "temporal",
    "text_guided",
]
