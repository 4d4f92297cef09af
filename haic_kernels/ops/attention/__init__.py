"""attention: flash-style attention with GQA, causal / full / frame-block masks, varlen batches,
key scores for token pruning (`attention`), and new tokens against a KV cache
(`attention_with_kvcache`). See each function for the contract."""

from haic_kernels.ops.attention.api import AttentionOutput, attention
from haic_kernels.ops.attention.kvcache import append_and_attend, attention_with_kvcache

__all__ = ["AttentionOutput", "append_and_attend", "attention", "attention_with_kvcache"]
