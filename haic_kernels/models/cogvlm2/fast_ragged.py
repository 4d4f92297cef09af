"""Ragged (varlen) batches for `FastCogVLM2`: prompts of different lengths packed back to back.

A ragged batch is given to ``FastCogVLM2.forward`` / ``generate`` either as

* lists of 1-D tensors: ``input_ids[b]`` [S_b], ``token_type_ids[b]`` [S_b]; or
* right-padded tensors ``input_ids, token_type_ids`` [B, S] plus ``lengths`` int [B]
  (row b's tokens are ``[:lengths[b]]``; what follows is ignored; `pad_prompts` builds these).

Inside, the rows are packed into one sequence of ``T = sum(S_b)`` tokens with ``cu_seqlens``
int32 [B+1] (row b = tokens ``cu_seqlens[b]:cu_seqlens[b+1]``):

* position ids: `build_position_ids` of each row alone (each row starts at 0);
* expert routing: `Routing.from_token_types(types, cu_seqlens=...)`, so the last token of a row
  is a language-expert token even when the next row starts with vision tokens;
* every LM layer runs on the packed tokens ([1, T, D]): expert_linear on [T, K], rope_qkv with
  the per-row positions, `haic_kernels.attention` varlen (causal inside each row);
* frames: the encoded frames fill the vision slots in order, row 0's first (each row may have
  its own number of frames, 0 included).

Rows of equal length need none of this: ``forward``/``generate`` then run the dense path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from haic_kernels.constants import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE
from haic_kernels.ops.expert_linear import Routing

from .language import build_position_ids, check_token_types

__all__ = [
    "Packed",
    "is_ragged",
    "pack_rows",
    "pad_prompts",
    "run_packed",
    "split_rows",
    "unpack_rows",
]

Row = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Packed:
    """A ragged batch packed back to back: ids, types, positions [T]; ``cu_seqlens`` int32
    [B+1]; ``lengths`` (host ints, one per row)."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    lengths: list[int]

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def max_seqlen(self) -> int:
        return max(self.lengths)

    @property
    def last_index(self) -> torch.Tensor:
        """int64 [B]: each row's last token in the packed order."""
        return self.cu_seqlens[1:].to(torch.long) - 1

    def unpack(self, x: torch.Tensor, fill: float = float("nan")) -> torch.Tensor:
        """Packed [T, ...] -> right-padded [B, max_seqlen, ...] (``fill`` past each row)."""
        return unpack_rows(x, self.lengths, fill)


def unpack_rows(x: torch.Tensor, lengths: list[int], fill: float = float("nan")) -> torch.Tensor:
    """Packed [T, ...] rows of ``lengths`` -> right-padded [B, max(lengths), ...]."""
    out = x.new_full((len(lengths), max(lengths), *x.shape[1:]), fill)
    row, col = _row_col(lengths, x.device)
    out[row, col] = x
    return out


def _row_col(lengths: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, column) int64 [T] of every packed token in the padded [B, max_len] layout."""
    lens = torch.tensor(lengths, dtype=torch.long, device=device)
    row = torch.repeat_interleave(torch.arange(len(lengths), device=device), lens)
    start = torch.cumsum(lens, 0) - lens
    col = torch.arange(int(lens.sum()), device=device) - start[row]
    return row, col


def is_ragged(input_ids: object, lengths: object) -> bool:
    """True for the ragged forms: lists/tuples of rows, or ``lengths`` given."""
    return isinstance(input_ids, (list, tuple)) or lengths is not None


def _check_row(i: int, ids: object, types: object) -> Row:
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dim() != 1:
        raise ValueError(f"input_ids[{i}]: expected a 1-D integer tensor [S_{i}]")
    if not isinstance(types, torch.Tensor) or types.shape != ids.shape:
        got = tuple(types.shape) if isinstance(types, torch.Tensor) else type(types).__name__
        raise ValueError(
            f"token_type_ids[{i}]: expected the shape of input_ids[{i}] {tuple(ids.shape)}, "
            f"got {got}"
        )
    if ids.numel() == 0:
        raise ValueError(f"input_ids[{i}]: empty row (every row needs at least one token)")
    return ids, types


def split_rows(input_ids: object, token_type_ids: object, lengths: object) -> list[Row]:
    """The rows (ids [S_b], types [S_b]) of a ragged batch in either form; ValueError naming
    the argument on a mismatch, a length out of range or an empty row."""
    if isinstance(input_ids, (list, tuple)):
        if lengths is not None:
            raise ValueError("lengths: not needed with lists of rows (their lengths are implied)")
        if not isinstance(token_type_ids, (list, tuple)) or len(token_type_ids) != len(input_ids):
            raise ValueError(
                f"token_type_ids: expected a list of {len(input_ids)} rows like input_ids"
            )
        if not input_ids:
            raise ValueError("input_ids: expected at least one row")
        rows = [_check_row(i, a, t) for i, (a, t) in enumerate(zip(input_ids, token_type_ids))]
        if len({r[0].device for r in rows} | {r[1].device for r in rows}) != 1:
            raise ValueError("input_ids, token_type_ids: every row must be on one device")
        return rows
    if not isinstance(input_ids, torch.Tensor) or input_ids.dtype.is_floating_point:
        raise ValueError("input_ids must be an integer tensor [B, S] or a list of rows [S_b]")
    if input_ids.dim() != 2 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must be [B, S] with B >= 1, got {tuple(input_ids.shape)}")
    if not isinstance(token_type_ids, torch.Tensor) or token_type_ids.shape != input_ids.shape:
        got = tuple(token_type_ids.shape) if isinstance(token_type_ids, torch.Tensor) else None
        raise ValueError(
            f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, got {got}"
        )
    b, s = input_ids.shape
    if isinstance(lengths, torch.Tensor):
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(f"lengths: expected integers, got {lengths.dtype}")
        lens = [int(n) for n in lengths.reshape(-1).tolist()]
        shape = tuple(lengths.shape)
    elif isinstance(lengths, (list, tuple)) and all(
        isinstance(n, int) and not isinstance(n, bool) for n in lengths
    ):
        lens, shape = [int(n) for n in lengths], (len(lengths),)
    else:
        raise ValueError(f"lengths: expected an int tensor or list [B={b}], got {lengths!r}")
    if shape != (b,):
        raise ValueError(f"lengths: expected shape [B={b}] (one per row of input_ids), got {shape}")
    bad = [i for i, n in enumerate(lens) if not 1 <= n <= s]
    if bad:
        raise ValueError(
            f"lengths: row {bad[0]} has length {lens[bad[0]]}; every length must lie in "
            f"[1, S={s}] (no empty rows, right padding only)"
        )
    return [(input_ids[i, :n], token_type_ids[i, :n]) for i, n in enumerate(lens)]


def pack_rows(rows: Sequence[Row], vocab_size: int) -> Packed:
    """Pack validated rows; checks ids against ``vocab_size`` and the token types."""
    ids = torch.cat([r[0] for r in rows]).to(torch.long)
    types = torch.cat([r[1] for r in rows]).to(torch.long)
    check_token_types(types)
    if bool(((ids < 0) | (ids >= vocab_size)).any()):
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size})")
    lengths = [int(r[0].shape[0]) for r in rows]
    cu = torch.zeros(len(rows) + 1, dtype=torch.int32, device=ids.device)
    cu[1:] = torch.cumsum(torch.tensor(lengths, device=ids.device), 0)
    pos = torch.cat([build_position_ids(r[1].to(torch.long)) for r in rows])
    return Packed(ids, types, pos, cu, lengths)


def pad_prompts(prompts: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad prompts (`PromptInputs`, or (input_ids, token_type_ids) pairs) of any lengths:
    (input_ids [B, S], token_type_ids [B, S], lengths int64 [B]), padding = language id 0."""
    if not prompts:
        raise ValueError("prompts must not be empty")
    pairs = [
        (p.input_ids, p.token_type_ids) if hasattr(p, "input_ids") else tuple(p) for p in prompts
    ]
    lens = [int(a.shape[0]) for a, _ in pairs]
    s = max(lens)
    dev = pairs[0][0].device
    ids = torch.zeros(len(pairs), s, dtype=torch.long, device=dev)
    types = torch.full((len(pairs), s), LANGUAGE_TOKEN_TYPE, dtype=torch.long, device=dev)
    for i, (a, t) in enumerate(pairs):
        ids[i, : a.shape[0]] = a
        types[i, : t.shape[0]] = t
    return ids, types, torch.tensor(lens, dtype=torch.long, device=dev)


def run_packed(
    model,
    p: Packed,
    frames: torch.Tensor | None,
    vision_embeds: torch.Tensor | None,
    *,
    kv_sink=None,
    last_only: bool = False,
) -> torch.Tensor:
    """The prefill of `FastCogVLM2` ``model`` on a packed batch: fp32 logits [T, V] (or
    [B, V] for each row's last token with ``last_only``). ``kv_sink(i, k, v)`` gets layer i's
    packed keys/values [1, Hkv, T, Dh]."""
    cfg = model.config
    vis = p.token_type_ids == VISION_TOKEN_TYPE
    rows, _ = model._vision_rows(int(vis.sum()), frames, vision_embeds, False)
    x = model.model.embed_tokens(p.input_ids)  # [T, D]
    if rows is not None:
        x = x.index_put((vis,), rows.to(device=x.device, dtype=x.dtype))
    max_pos = cfg.text.max_position_embeddings
    if int(p.position_ids.max()) >= max_pos:
        raise ValueError(
            f"position_ids: ids up to {int(p.position_ids.max())} exceed "
            f"max_position_embeddings={max_pos} (input_ids too long for this config)"
        )
    route = Routing.from_token_types(
        p.token_type_ids, 2 if cfg.vision_expert else 1, cu_seqlens=p.cu_seqlens
    )
    x, pos = x.unsqueeze(0), p.position_ids.unsqueeze(0)
    for i, layer in enumerate(model.model.layers):
        x, (k, v) = layer(
            x, None, pos, None, routing=route, cu_seqlens=p.cu_seqlens, max_seqlen=p.max_seqlen
        )
        if kv_sink is not None:
            kv_sink(i, k, v)
    x = x[0]
    if last_only:
        x = x[p.last_index]
    return model.lm_head(model.model.norm(x)).float()
