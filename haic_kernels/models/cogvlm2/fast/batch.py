"""`TokenBatch`: the token rows of one forward, packed, with all the batch metadata layers need.

Rows are laid end to end (row b = tokens ``cu_seqlens[b] : cu_seqlens[b + 1]``); a dense
``[B, S]`` batch is a packed batch of equal rows. Ids, types, positions (`tokens`, per row), the
expert `Routing` (built once for every layer) and host data read ONCE when built (row lengths
and token counts, the largest position), so no layer reads the device. Input forms: ``[B, S]``
tensors, right-padded ``[B, S]`` with ``lengths`` int ``[B]`` (`pad_prompts`), lists of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from haic_kernels.constants import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE
from haic_kernels.ops.expert_linear import Routing
from haic_kernels.pruning import TokenCounts
from haic_kernels.tokens import build_position_ids, check_token_types, vision_expert_mask

from ..config import CogVLM2Config

__all__ = ["TokenBatch", "pad_prompts"]

Row = tuple[torch.Tensor, torch.Tensor]


def routing_for(types: torch.Tensor, cu_seqlens: torch.Tensor, vision_expert: bool) -> Routing:
    """The expert routing of packed tokens: CogVLM's rule (`tokens.vision_expert_mask`) with
    two experts, or every token to the language expert (the video model)."""
    if not vision_expert:
        return Routing.from_vision_mask(None, num_tokens=types.numel(), device=types.device)
    return Routing.from_vision_mask(vision_expert_mask(types, cu_seqlens))


@dataclass(frozen=True, eq=False)
class TokenBatch:
    """``input_ids``, ``token_type_ids``, ``position_ids``: int64 [T]; ``cu_seqlens`` int32
    [B+1]; ``routing`` over the T tokens; ``counts``: host `TokenCounts` per row (lengths, patch
    and vision tokens: what pruning's kept counts follow from); ``max_position`` (host)."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    routing: Routing
    counts: TokenCounts
    max_position: int

    @property
    def lengths(self) -> tuple[int, ...]:
        return self.counts.lengths

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def max_seqlen(self) -> int:
        return max(self.lengths)

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    @cached_property
    def last_index(self) -> torch.Tensor:
        """int64 [B]: each row's last token in the packed order."""
        return self.cu_seqlens[1:].to(torch.long) - 1

    @cached_property
    def seqlens(self) -> torch.Tensor:
        """int32 [B]: the row lengths on the device (from ``cu_seqlens``: no host copy)."""
        return self.cu_seqlens.diff()

    @cached_property
    def row_col(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, column) int64 [T] of every token in the right-padded [B, max_seqlen] layout."""
        rows = torch.arange(len(self.lengths), device=self.device)
        row = torch.repeat_interleave(rows, self.seqlens.long(), output_size=sum(self.lengths))
        col = torch.arange(row.numel(), device=self.device) - self.cu_seqlens.long()[row]
        return row, col

    def unpack(self, x: torch.Tensor, fill: float | int = float("nan")) -> torch.Tensor:
        """Packed [T, ...] -> right-padded [B, max_seqlen, ...], ``fill`` past each row."""
        out = x.new_full((self.batch_size, self.max_seqlen, *x.shape[1:]), fill)
        out[self.row_col] = x
        return out

    @classmethod
    def packed(
        cls,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
        cu_seqlens: torch.Tensor,
        counts: TokenCounts,
        max_position: int,
        config: CogVLM2Config,
    ) -> TokenBatch:
        """A batch from packed, already checked tokens whose host data is known (a pruned
        batch: the kept tokens, their original positions, the predicted counts)."""
        route = routing_for(token_type_ids, cu_seqlens, config.vision_expert)
        return cls(input_ids, token_type_ids, position_ids, cu_seqlens, route, counts,
                   max_position)  # fmt: skip

    @classmethod
    def from_inputs(
        cls,
        input_ids: object,
        token_type_ids: object,
        lengths: object = None,
        *,
        config: CogVLM2Config,
    ) -> TokenBatch:
        """Check and pack a model's inputs (any of the forms of the module docstring), reading
        the checks and the host data back once. ValueError naming the argument at fault."""
        rows = _split_rows(input_ids, token_type_ids, lengths)
        if any(r[1].dtype.is_floating_point for r in rows):
            raise ValueError("token_type_ids must be an integer tensor")
        ids = torch.cat([r[0] for r in rows]).to(torch.long)
        types = torch.cat([r[1] for r in rows]).to(torch.long)
        lens = [int(r[0].shape[0]) for r in rows]
        cu = torch.zeros(len(rows) + 1, dtype=torch.int32, device=ids.device)
        cu[1:] = torch.cumsum(torch.tensor(lens, device=ids.device), 0)
        pos = build_position_ids(types, cu, check=False)  # its types check is in the one read
        vocab, max_pos = config.text.vocab_size, config.text.position_limit
        vis = torch.zeros(len(rows) + 1, dtype=torch.long, device=ids.device)
        vis[1:] = torch.cumsum(types == VISION_TOKEN_TYPE, 0)[cu[1:].long() - 1]
        bad_types = ((types != LANGUAGE_TOKEN_TYPE) & (types != VISION_TOKEN_TYPE)).any()
        host = torch.cat([bad_types.view(1), ((ids < 0) | (ids >= vocab)).any().view(1),
                          pos.max().view(1), vis.diff()]).tolist()  # fmt: skip
        if host[0]:
            check_token_types(types)  # raises its message
        host = host[1:]
        if host[0]:
            raise ValueError(f"input_ids must lie in [0, vocab_size={vocab})")
        if host[1] >= max_pos:
            raise ValueError(
                f"position_ids: ids up to {host[1]} exceed the {max_pos} positions of this config "
                "(context_length, else max_position_embeddings): input_ids too long"
            )
        counts = TokenCounts.unpruned(lens, host[2:], config.tokens_per_frame)
        return cls.packed(ids, types, pos, cu, counts, host[1], config)


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


def _lengths(lengths: object, b: int, s: int) -> list[int]:
    if isinstance(lengths, torch.Tensor):
        if lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(f"lengths: expected integers, got {lengths.dtype}")
        lens, shape = [int(n) for n in lengths.reshape(-1).tolist()], tuple(lengths.shape)
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
    return lens


def _split_rows(input_ids: object, token_type_ids: object, lengths: object) -> list[Row]:
    """The rows (ids [S_b], types [S_b]) of a batch in any input form."""
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
    if input_ids.dim() != 2 or 0 in input_ids.shape:
        raise ValueError(f"input_ids must be [B, S] with B, S >= 1, got {tuple(input_ids.shape)}")
    if not isinstance(token_type_ids, torch.Tensor) or token_type_ids.shape != input_ids.shape:
        got = tuple(token_type_ids.shape) if isinstance(token_type_ids, torch.Tensor) else None
        raise ValueError(
            f"token_type_ids must have the shape of input_ids {tuple(input_ids.shape)}, got {got}"
        )
    b, s = input_ids.shape
    lens = [s] * b if lengths is None else _lengths(lengths, b, s)
    return [(input_ids[i, :n], token_type_ids[i, :n]) for i, n in enumerate(lens)]


def pad_prompts(prompts: Sequence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad prompts (`PromptInputs`, or (input_ids, token_type_ids) pairs) of any lengths:
    (input_ids [B, S], token_type_ids [B, S], lengths int64 [B]), padding = language id 0."""
    if not prompts:
        raise ValueError("prompts must not be empty")
    pairs = [
        (p.input_ids, p.token_type_ids) if hasattr(p, "input_ids") else tuple(p) for p in prompts
    ]
    lens = [int(a.shape[0]) for a, _ in pairs]
    dev = pairs[0][0].device
    ids = torch.zeros(len(pairs), max(lens), dtype=torch.long, device=dev)
    types = torch.full_like(ids, LANGUAGE_TOKEN_TYPE)
    for i, (a, t) in enumerate(pairs):
        ids[i, : a.shape[0]] = a
        types[i, : t.shape[0]] = t
    return ids, types, torch.tensor(lens, dtype=torch.long, device=dev)
