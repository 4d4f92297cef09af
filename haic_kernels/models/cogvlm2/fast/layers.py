"""The fast LM decoder layer: `forward` for a prefill, `decode` for one step, one body of math.

`FastDecoderLayer` holds the reference `CogVLMDecoderLayer`'s submodules (same names and
parameters, no copy) and computes, pre-norm, ``h = x + dense_e(attn(rope(qkv_e(rms(x)))))``,
``y = h + down_e(silu(gate_e(rms(h))) * up_e(rms(h)))`` through haic_kernels ops:
`rms_norm`, `add_rms_norm` (``h`` and ``rms(h)`` in one pass, the reference's fp32 numbers),
`silu_mul`, `expert_linear` with the batch's `Routing` when it has two experts (one expert,
the video model, and decode tokens, which are language tokens: plain ``F.linear``, cuBLAS;
with ``precision="fp8"`` the block's `Fp8Linears` instead, see `precision`),
`rope_qkv` (split + RoPE + flash layout in one pass), and
`attend` / `decode_attention`: the only places that call `attention` and
`attention_with_kvcache`'s body (`append_and_attend`, the decode kernel's op).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from haic_kernels.ops.activation import silu_mul
from haic_kernels.ops.attention import append_and_attend, attention
from haic_kernels.ops.expert_linear import Routing, expert_linear
from haic_kernels.ops.norm import add_rms_norm, rms_norm
from haic_kernels.ops.rope import rope_qkv, rope_qkv_to_cache

from ..config import CogVLM2Config
from .batch import TokenBatch
from .precision import Fp8Linears, Fp8Options, quantize_block

__all__ = ["FastDecoderLayer", "LayerCache", "LayerOutput", "Pending", "attend",
           "decode_attention", "prefill_attention"]  # fmt: skip


class LayerOutput(NamedTuple):
    """``x`` [T, D] (a `Pending` add when the layer defers it); ``k``, ``v`` [T, Hkv, Dh] (k
    after RoPE; None in a decode step, which writes them into its cache); ``scores`` float32
    [T] or None."""

    x: torch.Tensor | Pending
    k: torch.Tensor | None
    v: torch.Tensor | None
    scores: torch.Tensor | None


class Pending(NamedTuple):
    """A residual add not done yet: the hidden states are ``residual + out`` (both [.., D]),
    added inside the next RMSNorm (`add_rms_norm`) with the reference's rounding."""

    out: torch.Tensor
    residual: torch.Tensor


class LayerCache(NamedTuple):
    """``k``, ``v`` [B, capacity, Hkv, Dh]; ``seqlens`` int32 [B]: valid keys per row before the
    step (the row its token is written to), ``visible`` int32 [B]: ``seqlens + 1``, the keys the
    step's query sees. Kept up to date by `StaticKVCache`, whose lengths stay in range by
    construction (capacity = prompt + max_new_tokens)."""

    k: torch.Tensor
    v: torch.Tensor
    seqlens: torch.Tensor
    visible: torch.Tensor


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_scores: torch.Tensor | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    """`haic_kernels.attention` (``kwargs``: its options) -> (out, key scores or None): the one
    call of it in the fast model (its result type is this function's business alone)."""
    res = attention(q, k, v, key_scores=key_scores, **kwargs)
    return (res, None) if key_scores is None else (res[0], res[-1])


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    batch: TokenBatch,
    key_scores: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """q [T, Hq, Dh], k/v [T, Hkv, Dh] -> (out [T, Hq, Dh], scores [T] or None): causal inside
    each row (``max_seqlen`` from the batch's host data: no device read)."""
    return attend(q, k, v, key_scores, causal=True, cu_seqlens=batch.cu_seqlens,
                  max_seqlen=batch.max_seqlen, backend=backend)  # fmt: skip


def decode_attention(q: torch.Tensor, cache: LayerCache, *, backend: str = "auto") -> torch.Tensor:
    """One new token per row, its k/v already in the caches [B, capacity, Hkv, Dh] at row
    ``cache.seqlens`` (`rope_qkv_to_cache`): attend q [B, Hq, Dh] over each row's
    ``cache.visible`` keys -> [B, Hq, Dh]: `attention_with_kvcache` after its checks
    (`append_and_attend`: the cache's lengths are in range by construction and made once per
    step, not per layer), the CUDA split-K decode kernel where chosen; no host read, so CUDA
    graphs capture it."""
    out = append_and_attend(q[:, None], cache.k, cache.v, cache.visible, None, None, None,
                            scale=q.shape[-1] ** -0.5, backend=backend)  # fmt: skip
    return out[:, 0]


def _linear(
    x: torch.Tensor, language: nn.Linear, vision: nn.Linear | None, route: Routing | None,
    backend: str, fp8: Fp8Linears | None = None,
) -> torch.Tensor:  # fmt: skip
    """x [N, K] through each token's expert: `expert_linear` with a two-expert ``route``
    (language, vision); the language weights alone (``F.linear``: a grouped GEMM of one group
    is a slower cuBLAS GEMM) when ``route`` is None or has one expert. With ``fp8`` the same
    through the E4M3 weights (`Fp8Linears`: one fp8_linear per expert)."""
    if route is None or route.num_experts == 1:
        if fp8 is not None:
            return fp8.linear(x, language)
        return F.linear(x, language.weight, language.bias)
    if vision is None:
        raise ValueError(
            f"routing: built for {route.num_experts} experts, but the layer has only the "
            "language expert (the video model)"
        )
    experts = [language, vision]
    if fp8 is not None:
        return fp8.expert_linear(x, experts, route)
    return expert_linear(x, [e.weight for e in experts], [e.bias for e in experts], route,
                         backend=backend)  # fmt: skip


class FastDecoderLayer(nn.Module):
    """`language.CogVLMDecoderLayer` through haic_kernels ops, on the reference's parameters.

    ``backend`` goes to expert_linear and rope_qkv, ``attn_backend`` to attention; ``fp8``
    (None: native) quantizes the block's linears once, here (`precision.quantize_block`)."""

    def __init__(
        self, ref: nn.Module, config: CogVLM2Config, backend: str, attn_backend: str,
        fp8: Fp8Options | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        # The reference's modules, in its order (state_dict keys and order stay the reference's);
        # self_attn and mlp hold parameters only: their forward is never called.
        self.self_attn = ref.self_attn
        self.mlp = ref.mlp
        self.input_layernorm = ref.input_layernorm
        self.post_attention_layernorm = ref.post_attention_layernorm
        t = config.text
        # rope_precision: "release" rounds the angles as the release's bf16 model does; without
        # it bf16 tokens cannot match the release's or the reference's (positions > 256).
        self.rope = dict(num_heads=t.num_heads, num_kv_heads=t.num_kv_heads, theta=t.rope_theta,
                         interleaved=t.rope_interleaved,
                         rope_precision=t.rope_precision)  # fmt: skip
        self.backend, self.attn_backend = backend, attn_backend
        self.fp8 = quantize_block(self, fp8)

    def _block(
        self,
        x: torch.Tensor | Pending,
        pos: torch.Tensor,
        route: Routing | None,
        attend: Callable[
            ..., tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]
        ],
        defer: bool = False,
    ) -> LayerOutput:
        """The layer's math, once for prefill and decode. ``x``: the hidden states, or a
        `Pending` residual add (added by this layer's input norm, `add_rms_norm`); ``attend``:
        (qkv [T, W], positions [T]) -> (context [T, Hq, Dh], key scores or None, k, v or None:
        the keys after RoPE and the values, where they are not written into a cache); ``defer``:
        return the output as a `Pending` add, so the next layer's norm does it (one kernel less
        a layer)."""
        a, lang, vis = self.self_attn, self.mlp.language_mlp, getattr(self.mlp, "vision_mlp", None)

        def lin(inp: torch.Tensor, language: nn.Linear, vision: nn.Linear | None):
            return _linear(inp, language, vision, route, self.backend, self.fp8)

        n1, n2, be = self.input_layernorm, self.post_attention_layernorm, self.backend
        if isinstance(x, Pending):
            xn, x = add_rms_norm(x.out, x.residual, n1.weight, eps=n1.eps, backend=be)
        else:
            xn = rms_norm(x, n1.weight, eps=n1.eps, backend=be)
        qkv = lin(xn, a.language_expert_query_key_value,
                  getattr(a, "vision_expert_query_key_value", None))  # fmt: skip
        ctx, scores, k, v = attend(qkv, pos)
        vis_dense = getattr(a, "vision_expert_dense", None)
        y, h = add_rms_norm(lin(ctx.flatten(1), a.language_expert_dense, vis_dense), x, n2.weight,
                            eps=n2.eps, backend=be)  # fmt: skip

        def mlp(name: str, inp: torch.Tensor) -> torch.Tensor:
            return lin(inp, getattr(lang, name), None if vis is None else getattr(vis, name))

        g = silu_mul(mlp("gate_proj", y), mlp("up_proj", y), backend=be)
        out = mlp("down_proj", g)
        return LayerOutput(Pending(out, h) if defer else h + out, k, v, scores)

    def forward(
        self, x: torch.Tensor, batch: TokenBatch, key_scores: torch.Tensor | None = None
    ) -> LayerOutput:
        """Prefill: x [T, D] (the batch's packed tokens) -> `LayerOutput`. ``key_scores``
        (bool [T], query rows) also returns the attention's key scores."""

        def attend(qkv: torch.Tensor, pos: torch.Tensor):
            q, k, v = rope_qkv(qkv, pos, backend=self.backend, **self.rope)
            ctx, scores = prefill_attention(q, k, v, batch, key_scores, backend=self.attn_backend)
            return ctx, scores, k, v

        return self._block(x, batch.position_ids, batch.routing, attend)

    def decode(self, x: torch.Tensor | Pending, pos: torch.Tensor, cache: LayerCache) -> Pending:
        """One step: x [B, D] or a `Pending` add (one new language token per row at positions
        ``pos`` int64 [B]) -> the output as a `Pending` add, [B, D] each (the next layer's input
        norm, or the final norm, adds it); appends the step's k/v to ``cache`` at
        ``cache.seqlens``, which the caller advances once for all layers
        (`StaticKVCache.advance`) after the step."""

        def attend(qkv: torch.Tensor, pos: torch.Tensor):
            q = rope_qkv_to_cache(qkv, pos, cache.k, cache.v, cache.seqlens, backend=self.backend,
                                  **self.rope)  # fmt: skip
            return decode_attention(q, cache, backend=self.attn_backend), None, None, None

        out = self._block(x, pos, None, attend, defer=True)
        assert isinstance(out.x, Pending)
        return out.x
