"""Fast CogVLM2 language-model modules: the reference's parameters, forward through our ops.

`FastVisionExpertAttention`, `FastVisionExpertMLP` and `FastCogVLMDecoderLayer` hold exactly
the parameters of `language.VisionExpertAttention` / `VisionExpertMLP` / `CogVLMDecoderLayer`
(same names and shapes, so one state dict loads into either, both ways; ``from_reference``
shares the reference module's parameters without a copy) and compute the same function:

* QKV, the output projection and the MLP's three projections run through
  `haic_kernels.expert_linear` (a routed grouped GEMM: vision-expert tokens and language tokens
  in one launch; the video model, which has no vision expert, routes every token to the language
  expert, E = 1);
* the QKV split, RoPE on q and k and the flash layout come from one `haic_kernels.rope_qkv` pass;
* attention is `haic_kernels.attention` (causal, GQA, bottom-right aligned against a KV cache).

The routing (`haic_kernels.Routing`) depends only on the token types, so a model builds it once
per forward and passes it to every layer as ``routing=``; without it each module builds its own
from ``vision_mask`` (the reference's argument). KV caches keep the reference's layout,
``(k, v)`` each ``[B, Hkv, T, Dh]`` with k after RoPE (views of [B, T, Hkv, Dh] buffers here),
so `language.KVCache` and its position handling work unchanged with either module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from haic_kernels.ops.expert_linear import Routing, expert_linear
from haic_kernels.ops.rope import rope_qkv

from .config import CogVLM2Config
from .language import RMSNorm

__all__ = [
    "FastCogVLMDecoderLayer",
    "FastVisionExpertAttention",
    "FastVisionExpertMLP",
    "routing_from_mask",
]

KVPair = tuple[torch.Tensor, torch.Tensor]


def routing_from_mask(
    vision_mask: torch.Tensor | None, num_tokens: int, device: torch.device
) -> Routing:
    """The routing the reference applies for ``vision_mask`` (bool [B, S], or None: all
    language): expert 0 = language, 1 = vision; one expert when there is no mask."""
    if vision_mask is None:
        return Routing.from_vision_mask(None, num_tokens=num_tokens, device=device)
    return Routing.from_vision_mask(vision_mask)


def _experts(
    language: nn.Linear, vision: nn.Linear | None, route: Routing, what: str
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """(weights, biases) for ``route``: [language] with E=1, [language, vision] with E=2."""
    if route.num_experts == 1:
        return [language.weight], [language.bias]
    if route.num_experts == 2 and vision is not None:
        return [language.weight, vision.weight], [language.bias, vision.bias]
    have = 1 if vision is None else 2
    raise ValueError(
        f"routing: built for {route.num_experts} experts, but {what} has {have} "
        f"({'language only: the video model' if vision is None else 'language, vision'})"
    )


def _route(routing: Routing | None, vision_mask: torch.Tensor | None, x: torch.Tensor) -> Routing:
    if routing is not None:
        if not isinstance(routing, Routing):
            raise TypeError(f"routing: expected a haic_kernels.Routing, got {type(routing)}")
        return routing
    return routing_from_mask(vision_mask, x.shape[0] * x.shape[1], x.device)


class FastVisionExpertAttention(nn.Module):
    """`language.VisionExpertAttention` through expert_linear, rope_qkv and attention.

    ``backend`` goes to expert_linear and rope_qkv, ``attn_backend`` to attention ("auto"
    picks per device; "sdpa"/"torch" for the PyTorch paths).
    """

    def __init__(
        self, config: CogVLM2Config, *, backend: str = "auto", attn_backend: str = "auto"
    ) -> None:
        super().__init__()
        t = config.text
        self._setup(t.num_heads, t.num_kv_heads, t.head_dim, t.rope_theta, t.rope_interleaved,
                    backend, attn_backend)  # fmt: skip
        if config.vision_expert:
            self.vision_expert_query_key_value = nn.Linear(t.hidden_size, t.qkv_size, bias=True)
            self.vision_expert_dense = nn.Linear(t.q_size, t.hidden_size, bias=False)
        self.language_expert_query_key_value = nn.Linear(t.hidden_size, t.qkv_size, bias=False)
        self.language_expert_dense = nn.Linear(t.q_size, t.hidden_size, bias=False)

    def _setup(self, hq, hkv, d, theta, interleaved, backend, attn_backend) -> None:
        self.num_heads, self.num_kv_heads, self.head_dim = hq, hkv, d
        self.rope_theta, self.rope_interleaved = float(theta), bool(interleaved)
        self.backend, self.attn_backend = backend, attn_backend

    @classmethod
    def from_reference(
        cls, module: nn.Module, *, backend: str = "auto", attn_backend: str = "auto"
    ) -> FastVisionExpertAttention:
        """A fast module sharing ``module``'s (a `VisionExpertAttention`) parameters."""
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        rot = module.rotary_emb
        fast._setup(module.num_heads, module.num_kv_heads, module.head_dim, rot.theta,
                    rot.interleaved, backend, attn_backend)  # fmt: skip
        if hasattr(module, "vision_expert_query_key_value"):
            fast.vision_expert_query_key_value = module.vision_expert_query_key_value
            fast.vision_expert_dense = module.vision_expert_dense
        fast.language_expert_query_key_value = module.language_expert_query_key_value
        fast.language_expert_dense = module.language_expert_dense
        return fast

    def forward(
        self,
        x: torch.Tensor,
        vision_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        past: KVPair | None = None,
        *,
        routing: Routing | None = None,
        key_scores: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> tuple[torch.Tensor, KVPair] | tuple[torch.Tensor, KVPair, torch.Tensor]:
        """x [B, S, hidden], vision_mask bool [B, S] or None, position_ids [B, S], past
        ``(k, v)`` [B, Hkv, T, Dh] or None -> (out [B, S, hidden], (k, v) [B, Hkv, T+S, Dh]).

        ``key_scores`` (bool [B, S], query rows): also return the attention's float32
        ``scores [B, T+S]`` (head-mean attention each key receives from those rows, see
        `haic_kernels.attention`), what text-guided pruning ranks by.

        Packed (varlen) batch: ``cu_seqlens`` int32 [n+1] (sequence boundaries), x [1, T, hidden]
        and position_ids [1, T] holding the n sequences back to back, no ``past``; attention
        stays inside each sequence (``max_seqlen``: the longest, saves a host read); k, v come
        back packed as [1, Hkv, T, Dh]; ``key_scores`` [1, T] -> scores [1, T]."""
        from haic_kernels.ops.attention import attention

        b, s, _ = x.shape
        if cu_seqlens is not None and (b != 1 or past is not None):
            raise ValueError("cu_seqlens: needs a packed x [1, T, hidden] and no past")
        route = _route(routing, vision_mask, x)
        ws, bs = _experts(
            self.language_expert_query_key_value,
            getattr(self, "vision_expert_query_key_value", None),
            route,
            "query_key_value",
        )
        qkv = expert_linear(x.reshape(b * s, -1), ws, bs, route, backend=self.backend)
        q, k, v = rope_qkv(
            qkv.view(b, s, -1),
            position_ids,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            theta=self.rope_theta,
            interleaved=self.rope_interleaved,
            backend=self.backend,
        )  # [B, S, H, Dh] each
        if past is not None:
            k = torch.cat([past[0].transpose(1, 2), k], dim=1)
            v = torch.cat([past[1].transpose(1, 2), v], dim=1)
        scores = None
        if cu_seqlens is not None:
            res = attention(
                q[0], k[0], v[0], causal=True, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                key_scores=None if key_scores is None else key_scores[0],
                backend=self.attn_backend,
            )  # fmt: skip
            ctx, scores = (res, None) if key_scores is None else (res[0], res[1].unsqueeze(0))
        elif key_scores is None:
            ctx = attention(q, k, v, causal=True, backend=self.attn_backend)  # [B, S, Hq, Dh]
        else:
            ctx, scores = attention(
                q, k, v, causal=True, key_scores=key_scores, backend=self.attn_backend
            )
        ws, _ = _experts(
            self.language_expert_dense, getattr(self, "vision_expert_dense", None), route, "dense"
        )
        out = expert_linear(ctx.reshape(b * s, -1), ws, None, route, backend=self.backend)
        kv = (k.transpose(1, 2), v.transpose(1, 2))
        if scores is not None:
            return out.view(b, s, -1), kv, scores
        return out.view(b, s, -1), kv


class _SwiGLU(nn.Module):
    """Parameter container with `language.MLP`'s names: gate_proj, up_proj, down_proj."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)


class FastVisionExpertMLP(nn.Module):
    """`language.VisionExpertMLP` (routed SwiGLU) through expert_linear."""

    def __init__(self, config: CogVLM2Config, *, backend: str = "auto") -> None:
        super().__init__()
        t = config.text
        self.backend = backend
        self.language_mlp = _SwiGLU(t.hidden_size, t.intermediate_size)
        if config.vision_expert:
            self.vision_mlp = _SwiGLU(t.hidden_size, t.intermediate_size)

    @classmethod
    def from_reference(cls, module: nn.Module, *, backend: str = "auto") -> FastVisionExpertMLP:
        """A fast module sharing ``module``'s (a `VisionExpertMLP`) parameters."""
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.backend = backend
        fast.language_mlp = module.language_mlp
        if hasattr(module, "vision_mlp"):
            fast.vision_mlp = module.vision_mlp
        return fast

    def forward(
        self,
        x: torch.Tensor,
        vision_mask: torch.Tensor | None,
        *,
        routing: Routing | None = None,
    ) -> torch.Tensor:
        """x [B, S, hidden] -> [B, S, hidden]: ``down_e(silu(gate_e(x)) * up_e(x))``."""
        b, s, _ = x.shape
        route = _route(routing, vision_mask, x)
        vis = getattr(self, "vision_mlp", None)
        x2 = x.reshape(b * s, -1)

        def proj(name: str, inp: torch.Tensor) -> torch.Tensor:
            lang_lin = getattr(self.language_mlp, name)
            vis_lin = getattr(vis, name) if vis is not None else None
            ws, _ = _experts(lang_lin, vis_lin, route, f"mlp.{name}")
            return expert_linear(inp, ws, None, route, backend=self.backend)

        h = F.silu(proj("gate_proj", x2)) * proj("up_proj", x2)
        return proj("down_proj", h).view(b, s, -1)


class FastCogVLMDecoderLayer(nn.Module):
    """`language.CogVLMDecoderLayer` with the fast attention and MLP (RMSNorms stay torch)."""

    def __init__(
        self, config: CogVLM2Config, *, backend: str = "auto", attn_backend: str = "auto"
    ) -> None:
        super().__init__()
        t = config.text
        self.self_attn = FastVisionExpertAttention(
            config, backend=backend, attn_backend=attn_backend
        )
        self.mlp = FastVisionExpertMLP(config, backend=backend)
        self.input_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps)

    @classmethod
    def from_reference(
        cls, module: nn.Module, *, backend: str = "auto", attn_backend: str = "auto"
    ) -> FastCogVLMDecoderLayer:
        """A fast layer sharing ``module``'s (a `CogVLMDecoderLayer`) parameters."""
        fast = cls.__new__(cls)
        nn.Module.__init__(fast)
        fast.self_attn = FastVisionExpertAttention.from_reference(
            module.self_attn, backend=backend, attn_backend=attn_backend
        )
        fast.mlp = FastVisionExpertMLP.from_reference(module.mlp, backend=backend)
        fast.input_layernorm = module.input_layernorm
        fast.post_attention_layernorm = module.post_attention_layernorm
        return fast

    def forward(
        self,
        x: torch.Tensor,
        vision_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        past: KVPair | None = None,
        *,
        routing: Routing | None = None,
        key_scores: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> tuple[torch.Tensor, KVPair] | tuple[torch.Tensor, KVPair, torch.Tensor]:
        """As the reference layer; ``key_scores`` (bool [B, S]) also returns the attention's
        key scores [B, T+S] as a third element; ``cu_seqlens``/``max_seqlen``: a packed batch
        x [1, T, hidden] (see `FastVisionExpertAttention.forward`; pass ``routing=`` built with
        the same ``cu_seqlens``)."""
        route = _route(routing, vision_mask, x)
        res = self.self_attn(
            self.input_layernorm(x),
            vision_mask,
            position_ids,
            past,
            routing=route,
            key_scores=key_scores,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
        )
        h = x + res[0]
        y = h + self.mlp(self.post_attention_layernorm(h), vision_mask, routing=route)
        return (y, *res[1:])
