"""token_prune: the kernels behind visual-token pruning (score, select, compact, merge).

Public functions live in api.py; backends in reference.py (PyTorch), triton.py and cuda.py
(haic_kernels._C, selection only), imported only when used. The policies that combine these
kernels (temporal, salient, text-guided) live in ``haic_kernels.pruning``.
"""

from haic_kernels.ops.token_prune.api import (
    Compacted,
    compact,
    frame_cosine_scores,
    gather_rows,
    keep_counts,
    merge_weighted,
    nearest_kept,
    segment_topk,
)

__all__ = [
    "Compacted",
    "compact",
    "frame_cosine_scores",
    "gather_rows",
    "keep_counts",
    "merge_weighted",
    "nearest_kept",
    "segment_topk",
]
