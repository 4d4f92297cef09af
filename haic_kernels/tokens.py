"""CogVLM's token rules, in one place: type checks, position ids, the visual-expert mask.

A leaf module (torch and `constants` only): the reference model, the fast model and the
pruning policies all follow these rules, and the kernel library (`ops`) knows none of them.

Every function takes either rows ``[B, S]`` (each row a sequence), one sequence ``[S]``, or
sequences packed back to back ``[T]`` with ``cu_seqlens`` int ``[n + 1]`` (sequence ``b`` is
``cu_seqlens[b] : cu_seqlens[b + 1]``). The packed form is the general one; rows are packed rows
of equal length. No function reads the device back to the host (except the value checks of
`check_token_types`).
"""

from __future__ import annotations

import torch

from haic_kernels.constants import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE

__all__ = ["build_position_ids", "check_token_types", "vision_expert_mask"]


def check_token_types(token_type_ids: object, name: str = "token_type_ids") -> None:
    """ValueError unless ``token_type_ids`` is an integer tensor of 0 (language) / 1 (vision)."""
    if not isinstance(token_type_ids, torch.Tensor) or token_type_ids.dtype.is_floating_point:
        raise ValueError(f"{name} must be an integer tensor")
    bad = (token_type_ids != LANGUAGE_TOKEN_TYPE) & (token_type_ids != VISION_TOKEN_TYPE)
    if bool(bad.any()):
        raise ValueError(
            f"{name} must hold only {LANGUAGE_TOKEN_TYPE} (language) and {VISION_TOKEN_TYPE} "
            "(vision)"
        )


def _flat(
    token_type_ids: torch.Tensor, cu_seqlens: torch.Tensor | None, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(types [T], first-of-sequence bool [T], last-of-sequence bool [T]) of any accepted form."""
    if check:
        check_token_types(token_type_ids)
    t = token_type_ids
    if cu_seqlens is None:
        if t.dim() not in (1, 2):
            raise ValueError(f"token_type_ids must be [B, S] or [S], got {tuple(t.shape)}")
        if t.numel() == 0:
            return t.reshape(-1), t.reshape(-1) != 0, t.reshape(-1) != 0
        rows = t.reshape(-1, t.shape[-1])
        col = torch.arange(rows.shape[1], device=t.device).expand_as(rows)
        return rows.reshape(-1), (col == 0).reshape(-1), (col == rows.shape[1] - 1).reshape(-1)
    if t.dim() != 1:
        raise ValueError(f"token_type_ids: packed sequences must be [T], got {tuple(t.shape)}")
    n = t.shape[0]
    cu = cu_seqlens.to(device=t.device, dtype=torch.long)
    # One slot past the end, so that empty sequences (cu[b] == cu[b+1]) mark nothing wrong.
    first = torch.zeros(n + 1, dtype=torch.bool, device=t.device).index_fill_(0, cu[:-1], True)
    after = torch.zeros(n + 1, dtype=torch.bool, device=t.device).index_fill_(0, cu[1:], True)
    return t, first[:n], after[1:]


def build_position_ids(
    token_type_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None, *, check: bool = True
) -> torch.Tensor:
    """Position ids from token types, the release's rule: int64, the shape of the input.

    1. The first and the last token of every run of vision tokens (boi and eoi) count as
       language tokens (a run at the start or end of a sequence included).
    2. The position advances by one on every language token and on the first vision token after
       a language token; it is 0 at the first token of each sequence.

    So a frame of 66 tokens between language tokens, after position p, gets boi = p+1, all 64
    patch tokens p+2, eoi = p+3; a back-to-back run of frames shares one id for its inside.

    ``check=False``: the caller has checked the types (`check_token_types` reads a flag back
    from the device; a caller that reads other values too folds it into its one read).
    """
    t, first, last = _flat(token_type_ids, cu_seqlens, check)
    lang = t != VISION_TOKEN_TYPE
    prev_lang = first | lang.roll(1)  # a sequence start acts as a language token ...
    next_lang = last | lang.roll(-1)  # ... and so does its end
    as_lang = lang | prev_lang | next_lang  # boi and eoi relabelled
    step = (as_lang | as_lang.roll(1)) & ~first
    c = step.long().cumsum(0)
    start = torch.cummax(torch.where(first, torch.arange(t.numel(), device=t.device), 0), 0)
    pos = c - c[start.values]
    return pos.view(token_type_ids.shape)


def vision_expert_mask(
    token_type_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Bool, the shape of the input: True where a token uses the vision expert.

    A token is routed to the vision expert when it AND the next token of its sequence are
    vision tokens; the last token of every sequence is language (it has no next token).
    """
    t, _, last = _flat(token_type_ids, cu_seqlens)
    vis = t == VISION_TOKEN_TYPE
    return (vis & vis.roll(-1) & ~last).view(token_type_ids.shape)
