"""The scores the pruning policies need, from the REFERENCE model with eager softmax (oracle).

The fast model gets the same numbers from ``attention(..., key_scores=...)`` without ever
forming the attention matrix; these functions recompute the attention probabilities of one layer
from forward hooks on the stock modules, so tests can check the fast model's scores and run
every policy on the reference. They cost one extra forward.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from haic_kernels.models.cogvlm2.language import apply_rotary, routed

__all__ = ["lm_key_scores_reference", "vision_cls_scores_reference"]


@torch.no_grad()
def vision_cls_scores_reference(vision: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """float32 [F, L]: head-mean softmax probability the CLS query (row 0) gives each of the L
    keys of its frame in the vision tower's LAST layer (full attention). ``vision`` is the
    reference ``EVA2CLIPModel``."""
    attn = vision.transformer.layers[-1].attention
    seen: dict[str, torch.Tensor] = {}

    def grab(module: nn.Module, args: tuple) -> None:
        seen.setdefault("x", args[0])

    handle = attn.register_forward_pre_hook(grab)
    try:
        vision(images)
    finally:
        handle.remove()
    x = seen["x"]
    n, length, _ = x.shape
    qkv = attn.query_key_value(x).view(n, length, 3, attn.num_heads, attn.head_dim)
    q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    logits = torch.matmul(q[:, :, :1].double(), k.double().transpose(-1, -2))
    probs = torch.softmax(logits / math.sqrt(attn.head_dim), dim=-1)  # [N, H, 1, L]
    return probs.mean(dim=(1, 2)).to(torch.float32)


@torch.no_grad()
def lm_key_scores_reference(
    model: nn.Module,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    *,
    layer: int,
    query_rows: torch.Tensor,
    **forward_kwargs,
) -> torch.Tensor:
    """float32 [B, S]: at LM layer ``layer`` of the reference ``CogVLM2ForCausalLM``, the
    attention each key receives, averaged over the query heads and over the chosen query rows
    (``query_rows`` bool [B, S]) of its sequence - what ``attention(key_scores=query_rows)``
    returns. Causal; ``forward_kwargs`` go to the model (``vision_embeds``, ``position_ids``,
    ``keep``/``keep_from_layer`` of an earlier stage, ...)."""
    attn = model.model.layers[layer].self_attn
    seen: dict[str, tuple] = {}

    def hook(module, args, kwargs):
        seen.setdefault("args", args)

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids, token_type_ids, **forward_kwargs)
    finally:
        handle.remove()
    x, vision_mask, position_ids = seen["args"][:3]
    b, s, _ = x.shape
    qkv = routed(
        x,
        vision_mask,
        attn.language_expert_query_key_value,
        getattr(attn, "vision_expert_query_key_value", None),
    )
    q, k, _ = qkv.split(attn.split, dim=-1)
    q = q.view(b, s, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = k.view(b, s, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    cos, sin = attn.rotary_emb(position_ids, q.dtype)
    inter = attn.rotary_emb.interleaved
    q, k = apply_rotary(q, cos, sin, inter), apply_rotary(k, cos, sin, inter)
    k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)
    logits = torch.matmul(q.double(), k.double().transpose(-1, -2)) / math.sqrt(attn.head_dim)
    causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
    probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)  # [B, H, S, S]
    rows = query_rows.to(probs.device)
    if tuple(rows.shape) != (b, s):
        raise ValueError(
            f"query_rows: expected [B, S] = {(b, s)} (this layer's sequence), "
            f"got {tuple(rows.shape)}"
        )
    per_row = probs.mean(dim=1) * rows.unsqueeze(-1)  # [B, S, S]
    return (per_row.sum(1) / rows.sum(1, keepdim=True).clamp_min(1)).to(torch.float32)
