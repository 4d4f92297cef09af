"""token_merge: token reduction inside the vision tower (bipartite matching, packed merge, patch
difference). Public functions in api.py; backends in reference.py (PyTorch) and triton.py,
imported only when used. The policies live in ``haic_kernels.pruning.vision``."""

from haic_kernels.ops.token_merge.api import (
    NO_PREVIOUS,
    bipartite_match,
    max_merges,
    merge_packed,
    patch_difference,
)

__all__ = ["NO_PREVIOUS", "bipartite_match", "max_merges", "merge_packed", "patch_difference"]
