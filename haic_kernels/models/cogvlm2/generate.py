"""Greedy decoding with a KV cache, for the reference model and anything with its forward API.

``model(input_ids, token_type_ids, images, vision_embeds=..., position_ids=...,
past_key_values=..., use_cache=...)`` must return an object with ``.logits`` [B, S, V] and
``.past_key_values``. New tokens are language tokens; their positions continue from the last
position of each sequence (the cache carries it; without a cache the whole sequence's
positions are rebuilt, which gives the same ids).
"""

from __future__ import annotations

import torch

from ...constants import LANGUAGE_TOKEN_TYPE


def check_max_new_tokens(n: object) -> int:
    """``n`` must be an int >= 0 (bools refused); returns it."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {n!r}")
    return n


@torch.inference_mode()
def greedy_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    images: torch.Tensor | None = None,
    *,
    vision_embeds: torch.Tensor | None = None,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Generate up to ``max_new_tokens`` tokens per sequence by argmax; returns [B, n_new].

    ``use_cache=True``: one prefill, then one token per step through the KV cache.
    ``use_cache=False``: every step recomputes the whole sequence (frames included) - the
    check that the cache changes nothing. Stops early once every sequence has produced
    ``eos_token_id``; sequences that finished earlier are padded with it.
    """
    check_max_new_tokens(max_new_tokens)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, S], got {tuple(input_ids.shape)}")
    if token_type_ids.shape != input_ids.shape:
        raise ValueError(
            f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(token_type_ids.shape)}"
        )
    b = input_ids.shape[0]
    device = input_ids.device
    out = torch.empty(b, 0, dtype=torch.long, device=device)
    if max_new_tokens == 0:
        return out
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    new_type = torch.full((b, 1), LANGUAGE_TOKEN_TYPE, dtype=token_type_ids.dtype, device=device)

    ids, types = input_ids, token_type_ids
    result = model(ids, types, images, vision_embeds=vision_embeds, use_cache=use_cache)
    for step in range(max_new_tokens):
        nxt = result.logits[:, -1].argmax(dim=-1)
        if eos_token_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
            finished |= nxt == eos_token_id
        out = torch.cat([out, nxt.unsqueeze(1)], dim=1)
        if step + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
            break
        if use_cache:
            result = model(
                nxt.unsqueeze(1),
                new_type,
                past_key_values=result.past_key_values,
                use_cache=True,
            )
        else:
            ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
            types = torch.cat([types, new_type], dim=1)
            result = model(ids, types, images, vision_embeds=vision_embeds, use_cache=False)
    return out
