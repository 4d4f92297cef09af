"""Decoding with a KV cache for the reference model and anything with its forward API.

``model(input_ids, token_type_ids, images, vision_embeds=..., position_ids=...,
past_key_values=..., use_cache=...)`` must return an object with ``.logits`` [B, S, V] and
``.past_key_values``. New tokens are language tokens; their positions continue from the last
position of each sequence (the cache carries it; without a cache the whole sequence's
positions are rebuilt, which gives the same ids).

One loop, `stream_generate`, yields each step's tokens; `generate` collects them. The next
token comes from a `sampling.Sampler` (greedy by default, as the release demos). Generation
stops on every id of ``eos_token_id`` (an int or several, e.g. ``config.eos_token_ids``:
the image release ends a turn with ``<|eot_id|>`` 128009 as well as 128001).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ...constants import LANGUAGE_TOKEN_TYPE
from .config import CogVLM2Config
from .sampling import GREEDY

# sampler(logits fp32 [B, V], seen int64 [B, L], -1 = padding) -> int64 [B]
SamplerFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_max_new_tokens(n: object) -> int:
    """``n`` must be an int >= 0 (bools refused); returns it. The bound is the model's context,
    checked with the prompt by `check_context`, not a fixed number (the demos ask for 2048)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {n!r}")
    return n


def check_context(config: CogVLM2Config, last_position: int, max_new_tokens: int) -> None:
    """ValueError when a prompt whose last position id is ``last_position`` plus
    ``max_new_tokens`` new tokens passes the model's positions (``config.text.position_limit``:
    8192 for the releases, whatever their max_position_embeddings says).

    The n-th new token is chosen from the logits at position ``last_position + n - 1`` and never
    fed back, so the positions used end at ``last_position + max_new_tokens - 1``."""
    check_max_new_tokens(max_new_tokens)
    limit = config.text.position_limit
    if last_position + max_new_tokens - 1 >= limit:
        raise ValueError(
            f"max_new_tokens: the prompt reaches position {last_position}; {max_new_tokens} new "
            f"tokens would pass the model's context of {limit} positions (context_length, else "
            "max_position_embeddings)"
        )


def check_eos(eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
    """Stop ids as a tuple (empty: never stop early); ValueError naming the argument."""
    if eos_token_id is None:
        return ()
    ids = (eos_token_id,) if isinstance(eos_token_id, int) else tuple(eos_token_id)
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise ValueError(
            f"eos_token_id must be an id >= 0 or a sequence of them, got {eos_token_id!r}"
        )
    return ids


def stream_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    images: torch.Tensor | None = None,
    *,
    vision_embeds: torch.Tensor | None = None,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None = None,
    sampler: SamplerFn | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield each step's new tokens, int64 [B], until ``max_new_tokens`` or every row stopped.

    ``use_cache=True``: one prefill, then one token per step through the KV cache.
    ``use_cache=False``: every step recomputes the whole sequence (frames included) - the
    check that the cache changes nothing. ``sampler``: a `sampling.Sampler` (or any callable
    with its signature); None = greedy. A row that produced a stop id yields the first stop id
    from then on. The API a ``--stream`` CLI prints from; `generate` collects it.
    """
    check_max_new_tokens(max_new_tokens)
    eos = check_eos(eos_token_id)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [B, S], got {tuple(input_ids.shape)}")
    if token_type_ids.shape != input_ids.shape:
        raise ValueError(
            f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, "
            f"got {tuple(token_type_ids.shape)}"
        )
    choose = GREEDY.sampler() if sampler is None else sampler
    return _loop(model, input_ids, token_type_ids, images, vision_embeds, max_new_tokens, eos,
                 choose, use_cache)  # fmt: skip


@torch.inference_mode()
def _loop(model, input_ids, token_type_ids, images, vision_embeds, max_new_tokens, eos, choose,
          use_cache):  # fmt: skip
    b = input_ids.shape[0]
    device = input_ids.device
    if max_new_tokens == 0:
        return
    stops = torch.tensor(eos, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    new_type = torch.full((b, 1), LANGUAGE_TOKEN_TYPE, dtype=token_type_ids.dtype, device=device)
    ids, types, seen = input_ids, token_type_ids, input_ids.long()
    result = model(ids, types, images, vision_embeds=vision_embeds, use_cache=use_cache)
    for step in range(max_new_tokens):
        nxt = choose(result.logits[:, -1].float(), seen)
        if eos:
            nxt = torch.where(finished, torch.full_like(nxt, eos[0]), nxt)
            finished |= torch.isin(nxt, stops)
        yield nxt
        if step + 1 == max_new_tokens or (eos and bool(finished.all())):
            return
        seen = torch.cat([seen, nxt.unsqueeze(1)], dim=1)
        if use_cache:
            result = model(
                nxt.unsqueeze(1), new_type, past_key_values=result.past_key_values, use_cache=True
            )
        else:
            ids = torch.cat([ids, nxt.unsqueeze(1)], dim=1)
            types = torch.cat([types, new_type], dim=1)
            result = model(ids, types, images, vision_embeds=vision_embeds, use_cache=False)


def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    images: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """`stream_generate`'s tokens as int64 [B, n_new] (n_new <= max_new_tokens; shorter when
    every row stopped; finished rows padded with the first stop id). Same keywords."""
    steps = list(stream_generate(model, input_ids, token_type_ids, images, **kwargs))
    if not steps:
        return torch.empty(input_ids.shape[0], 0, dtype=torch.long, device=input_ids.device)
    return torch.stack(steps, dim=1)


def greedy_generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    images: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor:
    """`generate` with the greedy choice (kept for callers of the earlier name); a ``sampler``
    keyword is refused here."""
    if "sampler" in kwargs:
        raise TypeError("greedy_generate takes no sampler; call generate(..., sampler=...)")
    return generate(model, input_ids, token_type_ids, images, **kwargs)
