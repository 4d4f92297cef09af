"""attention: flash-style attention with GQA, causal / full / frame-block masks, varlen batches,
key scores for token pruning, and a decode path. See `attention` for the contract."""

from haic_kernels.ops.attention.api import attention

__all__ = ["attention"]
