"""`StaticKVCache`: per-layer key/value buffers a decode loop (and its CUDA graph) writes in place.

Layer i holds ``k, v [B, T_i + max_new_tokens, Hkv, Dh]`` (row b's prompt keys after RoPE at
``[:T_ib]``, then its new tokens; T_i: the layer's longest row, shorter after a text-guided
stage) and ``seqlens`` [B]. The prefill stores each layer as computed (`store`), so the packed
prompt keys never exist for all layers at once; buffers are reused in place by prompts of the
same shape (``same_shape``), so a CUDA graph captured on them stays valid.
"""

from __future__ import annotations

import torch

from .batch import TokenBatch
from .layers import LayerCache

__all__ = ["StaticKVCache"]


class StaticKVCache:
    """Static per-layer buffers (see the module docstring)."""

    def __init__(self) -> None:
        self.layers: list[LayerCache] = []
        self.new_tokens = 0
        self.same_shape = False

    def begin(self, new_tokens: int) -> None:
        """Start a prompt that decodes up to ``new_tokens`` tokens."""
        self.new_tokens, self.same_shape = new_tokens, True

    def store(self, i: int, k: torch.Tensor, v: torch.Tensor, batch: TokenBatch) -> None:
        """Layer i's prompt keys/values, packed [T, Hkv, Dh] in ``batch``'s rows."""
        size = (batch.batch_size, batch.max_seqlen + self.new_tokens, *k.shape[1:])
        old = self.layers[i] if i < len(self.layers) else None
        if old is not None and old.k.shape == size and (old.k.dtype, old.k.device) == (
            k.dtype, k.device,
        ):  # fmt: skip
            layer = old  # stale finite values past each row stay masked
        else:
            # Zeros, not empty: masked lanes of the SDPA fallback must not hold NaN.
            lens = torch.empty(size[0], dtype=torch.int32, device=k.device)
            layer = LayerCache(k.new_zeros(size), v.new_zeros(size), lens)
            self.same_shape = False
            self.layers[i:i + 1] = [layer]  # fmt: skip
        layer.k[batch.row_col] = k
        layer.v[batch.row_col] = v
        layer.seqlens.copy_(batch.seqlens)  # device to device: no wait for the host
