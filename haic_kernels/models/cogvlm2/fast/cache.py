"""`StaticKVCache`: per-layer key/value buffers a decode loop (and its CUDA graph) writes in place.

Layer i holds ``k, v [B, T_i + max_new_tokens, Hkv, Dh]`` (row b's prompt keys after RoPE at
``[:T_ib]``, then its new tokens; T_i: the layer's longest row, shorter after a text-guided
stage) and ``seqlens`` [B], a row of one int32 ``[L, B]`` buffer, so that a decode step
advances every layer's lengths with one kernel (`advance`), none per layer. The prefill stores
each layer as computed (`store`), so the packed prompt keys never exist for all layers at once;
buffers are reused in place by prompts of the same shape (``same_shape``), so a CUDA graph
captured on them stays valid.
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
        self.seqlens: torch.Tensor | None = None  # int32 [L, B]: every layer's valid keys
        self.new_tokens = 0
        self.num_layers = 1
        self.same_shape = False

    def begin(self, new_tokens: int, num_layers: int = 1) -> None:
        """Start a prompt of ``num_layers`` layers that decodes up to ``new_tokens`` tokens."""
        self.new_tokens, self.num_layers, self.same_shape = new_tokens, num_layers, True

    def advance(self) -> None:
        """Every layer's lengths + 1 (the step's token is in every cache): one kernel."""
        if self.seqlens is not None:
            self.seqlens.add_(1)

    def _lens(self, i: int, batch_size: int, device: torch.device) -> torch.Tensor:
        """Row i of the lengths buffer, (re)made when the batch or the device changed (the
        layers' caches then point at the new rows, and a captured graph is stale)."""
        buf = self.seqlens
        if buf is None or buf.shape[1] != batch_size or buf.device != device or buf.shape[0] <= i:
            new = torch.zeros(max(i + 1, self.num_layers), batch_size, dtype=torch.int32,
                              device=device)  # fmt: skip
            if buf is not None and buf.shape[1] == batch_size and buf.device == device:
                new[: buf.shape[0]] = buf
            self.seqlens, self.same_shape = new, False
            self.layers = [LayerCache(c.k, c.v, new[j]) for j, c in enumerate(self.layers)]
        return self.seqlens[i]

    def store(self, i: int, k: torch.Tensor, v: torch.Tensor, batch: TokenBatch) -> None:
        """Layer i's prompt keys/values, packed [T, Hkv, Dh] in ``batch``'s rows."""
        size = (batch.batch_size, batch.max_seqlen + self.new_tokens, *k.shape[1:])
        lens = self._lens(i, batch.batch_size, k.device)
        old = self.layers[i] if i < len(self.layers) else None
        if old is not None and old.k.shape == size and (old.k.dtype, old.k.device) == (
            k.dtype, k.device,
        ):  # fmt: skip
            layer = old  # stale finite values past each row stay masked
        else:
            # Zeros, not empty: masked lanes of the SDPA fallback must not hold NaN.
            layer = LayerCache(k.new_zeros(size), v.new_zeros(size), lens)
            self.same_shape = False
            self.layers[i:i + 1] = [layer]  # fmt: skip
        layer.k[batch.row_col] = k
        layer.v[batch.row_col] = v
        layer.seqlens.copy_(batch.seqlens)  # device to device: no wait for the host
