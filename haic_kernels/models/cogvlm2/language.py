"""The CogVLM2 language model pieces: KV cache, decoder layer (token rules: `haic_kernels.tokens`).

Names mirror the release (``model.layers.N.self_attn.language_expert_query_key_value``, ...).
Per decoder layer (pre-norm)::

    h = x + dense_e(attention(rope(qkv_e(rms(x)))))      e = the token's expert
    y = h + mlp_e(rms(h))                                 mlp_e = down(silu(gate(.)) * up(.))

Expert routing (image model, ``vision_expert=True``): a token uses the vision expert's weights
when it AND the next token are vision tokens (`vision_expert_mask`); everything else, including
the last vision token of a run, uses the language expert. The vision QKV has a bias, the
language QKV none; no other projection has one. Video models have only the language expert.

Attention is causal over the whole sequence (vision tokens included); key/value head j serves
query heads ``ratio*j .. ratio*j + ratio - 1`` (GQA). RoPE (rotate-half, base ``rope_theta``)
uses the position ids of `build_position_ids`, and is applied to k before it is cached
(rotate-half pairing is inferred, see ``TextConfig.rope_interleaved``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...constants import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE
from ...tokens import build_position_ids as build_position_ids  # the rules live in tokens.py
from ...tokens import check_token_types as check_token_types
from ...tokens import vision_expert_mask as vision_expert_mask
from .config import CogVLM2Config
from .vision import check_attn_impl

# F.scaled_dot_product_attention gained enable_gqa in torch 2.5; older versions repeat k/v.
_SDPA_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


# ---------------------------------------------------------------------------------------------
# KV cache


@dataclass
class KVCache:
    """Per-layer keys/values [B, Hkv, T, Dh] (keys after RoPE), plus where positions stand.

    ``last_position`` [B] is the position id of each sequence's last cached token and
    ``last_token_type`` [B] its token type, so a later chunk continues the position rule.
    The cache is immutable in use: a forward with it returns a new `KVCache`.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    last_position: torch.Tensor
    last_token_type: torch.Tensor

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        return int(self.last_position.shape[0])

    @property
    def seq_len(self) -> int:
        """Tokens cached per sequence (T)."""
        return int(self.keys[0].shape[2]) if self.keys else 0

    def continue_positions(self, token_type_ids: torch.Tensor) -> torch.Tensor:
        """Position ids [B, S] for a chunk that follows the cached tokens.

        The cached sequence ended on a token counted as language (rule 1 makes a final vision
        token an eoi), so the chunk is numbered as if preceded by one language token. A chunk
        may not start inside the vision run that the cache ended in: that run's last token was
        already numbered (and rotated into the cache) as its eoi.
        """
        check_token_types(token_type_ids)
        first_vis = token_type_ids[:, 0] == VISION_TOKEN_TYPE
        if bool((first_vis & (self.last_token_type == VISION_TOKEN_TYPE)).any()):
            raise ValueError(
                "token_type_ids: a chunk continuing a KV cache may not start with a vision token "
                "when the cached sequence ended with one (a vision run cannot be split across "
                "forward calls)"
            )
        lead = torch.full_like(token_type_ids[:, :1], LANGUAGE_TOKEN_TYPE)
        rel = build_position_ids(torch.cat([lead, token_type_ids], dim=1))[:, 1:]
        return rel + self.last_position.to(rel.device).unsqueeze(1)


# ---------------------------------------------------------------------------------------------
# modules


class RMSNorm(nn.Module):
    """``w * x / sqrt(mean(x^2) + eps)``, computed in fp32 and cast back to the input dtype."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight.to(torch.float32) * h).to(x.dtype)


def rope_inv_freq(
    head_dim: int, theta: float, dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """``1 / theta ** (arange(0, Dh, 2) / Dh)`` [Dh/2], each step in ``dtype``: the release's
    buffer, built by HF under ``torch_dtype`` (in fp16 the large powers overflow: 0 there)."""
    exponents = torch.arange(0, head_dim, 2, device=device).to(dtype) / head_dim
    return 1.0 / (theta**exponents)


class RotaryEmbedding(nn.Module):
    """RoPE with frequencies ``theta ** (-2i / Dh)``; rotate-half pairing unless ``interleaved``.

    ``inv_freq`` is a non-persistent fp32 buffer (kept fp32 under ``.to(dtype)``).
    ``precision`` (``TextConfig.rope_precision``): "fp32" computes the angles ``pos * inv_freq``
    in fp32 for every dtype; "release" computes them as the release does in a model of dtype
    ``dtype`` (its rotary module has ``pos_idx_in_fp32=False``): the position, the ``inv_freq``
    buffer - built as ``1 / theta ** (arange(0, Dh, 2) / Dh)`` in that dtype, as HF builds it under
    ``torch_dtype`` - and their product are rounded to ``dtype``. In fp32 both are the same.
    """

    def __init__(
        self, head_dim: int, theta: float, interleaved: bool = False, precision: str = "fp32"
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.interleaved = interleaved
        self.precision = precision
        self.register_buffer("inv_freq", self._inv_freq(None), persistent=False)

    def _inv_freq(self, device: torch.device | None, dtype: torch.dtype = torch.float32):
        return rope_inv_freq(self.head_dim, self.theta, dtype, device)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # model.to(bfloat16) would round inv_freq; rebuild it in fp32 wherever it now lives.
        super()._apply(fn, recurse)
        self.inv_freq = self._inv_freq(self.inv_freq.device)
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """position_ids [B, S] -> cos, sin [B, 1, S, Dh] in ``dtype``."""
        if self.precision == "release" and dtype != torch.float32:
            inv = self._inv_freq(position_ids.device, dtype)
            # [B, S, Dh/2] in dtype; cos/sin of the dtype tensor, as the release takes them (its
            # rounding of cos near +-1 is the dtype op's, not that of an fp32 cos rounded after)
            angles = position_ids.to(dtype).unsqueeze(-1) * inv
        else:
            angles = position_ids.to(torch.float32).unsqueeze(-1) * self.inv_freq
        if self.interleaved:
            angles = angles.repeat_interleave(2, dim=-1).unsqueeze(1)
        else:
            angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False
) -> torch.Tensor:
    """``x * cos + rot(x) * sin`` in fp32, cast back; x [B, H, S, Dh].

    ``rot`` maps pairs (a, b) to (-b, a): pairs (i, i + Dh/2) ("rotate half") by default,
    (2i, 2i + 1) when ``interleaved``.
    """
    xf = x.to(torch.float32)
    if interleaved:
        rotated = torch.stack([-xf[..., 1::2], xf[..., 0::2]], dim=-1).flatten(-2)
    else:
        half = xf.shape[-1] // 2
        rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
    return (xf * cos.to(torch.float32) + rotated * sin.to(torch.float32)).to(x.dtype)


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_impl: str
) -> torch.Tensor:
    """q [B, Hq, S, Dh], k/v [B, Hkv, T, Dh] with T >= S; query i sits at absolute T - S + i.

    Returns [B, Hq, S, Dh]. ``sdpa``: F.scaled_dot_product_attention; ``eager``: explicit
    matmul / fp32 softmax / matmul with k and v repeated per query group.
    """
    s, t = q.shape[2], k.shape[2]
    ratio = q.shape[1] // k.shape[1]
    mask = None
    if s > 1:
        rows = torch.arange(s, device=q.device).unsqueeze(1) + (t - s)
        mask = torch.arange(t, device=q.device).unsqueeze(0) <= rows  # [S, T] True = attend
    if attn_impl == "sdpa":
        if not _SDPA_GQA and ratio > 1:
            k, v = k.repeat_interleave(ratio, dim=1), v.repeat_interleave(ratio, dim=1)
        kwargs = {"enable_gqa": True} if _SDPA_GQA and ratio > 1 else {}
        if s == t and s > 1:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
    k, v = k.repeat_interleave(ratio, dim=1), v.repeat_interleave(ratio, dim=1)
    scores = torch.matmul(q * (1.0 / math.sqrt(q.shape[-1])), k.transpose(-1, -2))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, v)


def routed(
    x: torch.Tensor, vision_mask: torch.Tensor | None, language: nn.Module, vision: nn.Module | None
) -> torch.Tensor:
    """Apply ``vision`` to the rows where ``vision_mask`` is True and ``language`` elsewhere."""
    if vision is None or vision_mask is None:
        return language(x)
    y_lang = language(x[~vision_mask])
    y_vis = vision(x[vision_mask])
    out = y_lang.new_empty(*x.shape[:-1], y_lang.shape[-1])
    out[~vision_mask] = y_lang
    out[vision_mask] = y_vis
    return out


class VisionExpertAttention(nn.Module):
    def __init__(self, config: CogVLM2Config, attn_impl: str = "sdpa") -> None:
        super().__init__()
        t = config.text
        self.num_heads, self.num_kv_heads, self.head_dim = t.num_heads, t.num_kv_heads, t.head_dim
        self.split = (t.q_size, t.kv_size, t.kv_size)
        self.rotary_emb = RotaryEmbedding(
            t.head_dim, t.rope_theta, t.rope_interleaved, t.rope_precision
        )
        if config.vision_expert:
            self.vision_expert_query_key_value = nn.Linear(t.hidden_size, t.qkv_size, bias=True)
            self.vision_expert_dense = nn.Linear(t.q_size, t.hidden_size, bias=False)
        self.language_expert_query_key_value = nn.Linear(t.hidden_size, t.qkv_size, bias=False)
        self.language_expert_dense = nn.Linear(t.q_size, t.hidden_size, bias=False)
        self.attn_impl = check_attn_impl(attn_impl)

    def forward(
        self,
        x: torch.Tensor,
        vision_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, s, _ = x.shape
        qkv = routed(
            x,
            vision_mask,
            self.language_expert_query_key_value,
            getattr(self, "vision_expert_query_key_value", None),
        )
        q, k, v = qkv.split(self.split, dim=-1)
        q = q.view(b, s, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.rotary_emb(position_ids, q.dtype)
        inter = self.rotary_emb.interleaved
        q, k = apply_rotary(q, cos, sin, inter), apply_rotary(k, cos, sin, inter)
        if past is not None:
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        ctx = causal_attention(q, k, v, self.attn_impl)
        ctx = ctx.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim)
        out = routed(
            ctx, vision_mask, self.language_expert_dense, getattr(self, "vision_expert_dense", None)
        )
        return out, (k, v)


class MLP(nn.Module):
    """SwiGLU: ``down_proj(silu(gate_proj(x)) * up_proj(x))``, no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class VisionExpertMLP(nn.Module):
    def __init__(self, config: CogVLM2Config) -> None:
        super().__init__()
        t = config.text
        self.language_mlp = MLP(t.hidden_size, t.intermediate_size)
        if config.vision_expert:
            self.vision_mlp = MLP(t.hidden_size, t.intermediate_size)

    def forward(self, x: torch.Tensor, vision_mask: torch.Tensor | None) -> torch.Tensor:
        return routed(x, vision_mask, self.language_mlp, getattr(self, "vision_mlp", None))


class CogVLMDecoderLayer(nn.Module):
    def __init__(self, config: CogVLM2Config, attn_impl: str = "sdpa") -> None:
        super().__init__()
        t = config.text
        self.self_attn = VisionExpertAttention(config, attn_impl)
        self.mlp = VisionExpertMLP(config)
        self.input_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(t.hidden_size, t.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        vision_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn, kv = self.self_attn(self.input_layernorm(x), vision_mask, position_ids, past)
        h = x + attn
        return h + self.mlp(self.post_attention_layernorm(h), vision_mask), kv
