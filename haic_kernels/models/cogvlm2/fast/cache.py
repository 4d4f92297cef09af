"""`StaticKVCache`: per-layer key/value buffers a decode loop (and its CUDA graph) writes in place.

Layer i holds ``k, v [B, T_i + max_new_tokens, Hkv, Dh]`` (row b's prompt keys after RoPE at
``[:T_ib]``, then its new tokens; T_i: the layer's longest row, shorter after a text-guided
stage), ``seqlens`` [B] (the rows in the cache: where the step's token goes) and ``visible``
[B] (``seqlens + 1``: the keys the step's query sees), rows of one int32 ``[2, L, B]`` buffer,
so that a decode step advances every layer's lengths with one kernel (`advance`) and no layer
computes an index or a length. The prefill stores each layer as computed (`store`), so the
packed prompt keys never exist for all layers at once;
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
        self.lengths: torch.Tensor | None = None  # int32 [2, L, B]: seqlens, visible per layer
        self.new_tokens = 0
        self.num_layers = 1
        self.same_shape = False

    def begin(self, new_tokens: int, num_layers: int = 1) -> None:
        """Start a prompt of ``num_layers`` layers that decodes up to ``new_tokens`` tokens."""
        self.new_tokens, self.num_layers, self.same_shape = new_tokens, num_layers, True

    def advance(self) -> None:
        """Every layer's lengths + 1 (the step's token is in every cache): one kernel."""
        if self.lengths is not None:
            self.lengths.add_(1)

    def _lens(self, i: int, batch_size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Layer i's (seqlens, visible), the buffer (re)made when the batch or the device
        changed (the layers' caches then point at the new rows, and a captured graph is
        stale)."""
        buf = self.lengths
        if buf is None or buf.shape[2] != batch_size or buf.device != device or buf.shape[1] <= i:
            new = torch.zeros(2, max(i + 1, self.num_layers), batch_size, dtype=torch.int32,
                              device=device)  # fmt: skip
            if buf is not None and buf.shape[2] == batch_size and buf.device == device:
                new[:, : buf.shape[1]] = buf
            self.lengths, self.same_shape = new, False
            self.layers = [LayerCache(c.k, c.v, new[0, j], new[1, j])
                           for j, c in enumerate(self.layers)]  # fmt: skip
        assert self.lengths is not None
        return self.lengths[0, i], self.lengths[1, i]

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
            layer = LayerCache(k.new_zeros(size), v.new_zeros(size), *lens)
            self.same_shape = False
            self.layers[i:i + 1] = [layer]  # fmt: skip
        layer.k[batch.row_col] = k
        layer.v[batch.row_col] = v
        layer.seqlens.copy_(batch.seqlens)  # device to device: no wait for the host
        torch.add(batch.seqlens, 1, out=layer.visible)
