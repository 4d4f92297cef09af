"""`FastCogVLM2`: CogVLM2(-Video) through haic_kernels ops, checked against the reference.

``batch`` (`TokenBatch`: packed rows + batch metadata), ``vision`` (the tower), ``layers``
(`FastDecoderLayer`: ``forward`` for a prefill, ``decode`` for a step), ``prefill`` (THE
prefill: vision, pruning stages, layers, logits), ``prune`` (a pruning stage applied to a
batch), ``cache`` (static KV cache), ``decode`` (generation loop, CUDA graph), ``model``.
"""

from .batch import TokenBatch, pad_prompts
from .model import FastCausalLMOutput, FastCogVLM2

__all__ = ["FastCausalLMOutput", "FastCogVLM2", "TokenBatch", "pad_prompts"]
