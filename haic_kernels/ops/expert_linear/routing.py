"""`Routing`: which expert each token uses, grouped for the expert_linear grouped GEMM.

Built once per forward on the tokens' device with tensor ops only (no ``.item()``, no host
sync), so every decoder layer reuses it and a CUDA graph can capture it. Holds:

* ``expert_ids`` int32 ``[T]``: the expert of each token (original order);
* ``perm`` int32 ``[T]``: the tokens grouped by expert, stable: ``perm[offsets[e]:offsets[e+1]]``
  are the tokens of expert ``e`` in their original order (a counting sort, not a sort);
* ``offsets`` int32 ``[E + 1]``: group boundaries in ``perm`` (``offsets[0] = 0``,
  ``offsets[E] = T``); ``counts`` = ``offsets[1:] - offsets[:-1]``.

Tile metadata of the grouped GEMM: tile ``i`` of ``BLOCK_M`` rows covers rows of one expert
group only, groups laid out one after the other, so expert ``e`` owns
``ceil(count_e / BLOCK_M)`` tiles. The kernel derives a tile's expert and row range from
``offsets`` itself (E <= 8 scalar loads), which lets the autotuner pick ``BLOCK_M`` freely; the
launch grid uses the upper bound `max_tiles` = ``ceil(T / BLOCK_M) + E - 1`` (each group adds
at most one partial tile), so no count is read back to the host. `tile_table` materializes the
same metadata for inspection and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from haic_kernels.constants import LANGUAGE_TOKEN_TYPE, VISION_TOKEN_TYPE
from haic_kernels.ops._common import check_int, check_tensor

__all__ = ["MAX_EXPERTS", "Routing"]

# The kernel selects an expert's weight with a fixed chain of 7 comparisons (one per extra
# expert): 8 experts covers CogVLM (2) and small MoE-style adapter sets.
MAX_EXPERTS = 8

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


@dataclass(frozen=True, eq=False)
class Routing:
    """Tokens grouped by expert for `expert_linear` (see the module docstring for the fields)."""

    expert_ids: torch.Tensor
    perm: torch.Tensor
    offsets: torch.Tensor
    num_experts: int

    @property
    def num_tokens(self) -> int:
        """T, the number of routed tokens (rows of x)."""
        return int(self.expert_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.expert_ids.device

    @property
    def counts(self) -> torch.Tensor:
        """int32 [E]: tokens per expert (on device)."""
        return self.offsets[1:] - self.offsets[:-1]

    def max_tiles(self, block_m: int) -> int:
        """Upper bound on the grouped GEMM's row tiles of ``block_m`` rows (no host sync)."""
        return -(-self.num_tokens // block_m) + self.num_experts - 1 if self.num_tokens else 0

    def tile_table(self, block_m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(expert, row_start, row_end) int32 ``[max_tiles(block_m)]``, rows indexing ``perm``.

        Unused tiles (past the real ones) have expert -1 and an empty range. The same numbers
        the kernel computes from ``offsets``; built on device, no host sync.
        """
        n = self.max_tiles(block_m)
        counts = self.counts.to(torch.int64)
        tiles = (counts + block_m - 1) // block_m  # [E]
        tile_end = torch.cumsum(tiles, 0)  # [E]
        idx = torch.arange(n, device=self.device)
        expert = torch.searchsorted(tile_end, idx, right=True)  # E for unused tiles
        used = expert < self.num_experts
        e = expert.clamp(max=self.num_experts - 1)
        first_tile = tile_end[e] - tiles[e]
        start = self.offsets.to(torch.int64)[e] + (idx - first_tile) * block_m
        end = torch.minimum(start + block_m, self.offsets.to(torch.int64)[e + 1])
        zero = torch.zeros_like(start)
        return (
            torch.where(used, expert, -1).to(torch.int32),
            torch.where(used, start, zero).to(torch.int32),
            torch.where(used, end, zero).to(torch.int32),
        )

    # ---- constructors ---------------------------------------------------------------------

    @classmethod
    def from_expert_ids(cls, expert_ids: torch.Tensor, num_experts: int) -> Routing:
        """Routing from per-token expert ids, integer ``[T]`` (or ``[B, S]``, flattened).

        Ids must lie in ``[0, num_experts)``; ``num_experts`` <= 8. The range is checked with a
        ValueError on CPU and an asynchronous device assert on GPU (no host sync).
        """
        e = _check_num_experts(num_experts)
        check_tensor("expert_ids", expert_ids, dims=(1, 2), shape_hint="[T] or [B, S]")
        if expert_ids.dtype not in _INT_DTYPES:
            raise TypeError(f"expert_ids: expected an integer tensor, got {expert_ids.dtype}")
        ids = expert_ids.reshape(-1)
        bad = (ids < 0) | (ids >= e)
        _check_values(bad, f"expert_ids: every id must be in [0, {e}) (num_experts={e})")
        return cls._build(ids.to(torch.int32), e)

    @classmethod
    def from_vision_mask(
        cls,
        vision_mask: torch.Tensor | None,
        *,
        num_tokens: int | None = None,
        device: torch.device | str | None = None,
    ) -> Routing:
        """Two experts: 0 (language) where ``vision_mask`` is False, 1 (vision) where True.

        ``vision_mask`` bool ``[B, S]`` or ``[T]`` (as `language.vision_expert_mask` returns).
        None means every token uses the language expert: a one-expert routing over
        ``num_tokens`` tokens on ``device`` (the video model).
        """
        if vision_mask is None:
            if num_tokens is None:
                raise ValueError("num_tokens: required when vision_mask is None")
            n = check_int("num_tokens", num_tokens, minimum=0)
            ids = torch.zeros(n, dtype=torch.int32, device=device)
            return cls._build(ids, 1)
        check_tensor("vision_mask", vision_mask, dims=(1, 2), dtypes=(torch.bool,))
        return cls._build(vision_mask.reshape(-1).to(torch.int32), 2)

    @classmethod
    def from_token_types(
        cls,
        token_types: torch.Tensor,
        num_experts: int = 2,
        *,
        cu_seqlens: torch.Tensor | None = None,
    ) -> Routing:
        """CogVLM routing from token types (0 language, 1 vision), on their device.

        ``token_types`` integer ``[B, S]`` (each row a sequence) or ``[T]`` (one sequence, or
        sequences packed back to back with ``cu_seqlens`` int ``[n + 1]``, boundaries).
        ``num_experts=2`` (image model): a token uses expert 1 (vision) when it AND the next
        token of its sequence are vision tokens, else expert 0 (language), so the last token
        of every sequence is language (`language.vision_expert_mask`'s rule).
        ``num_experts=1`` (video model): every token uses expert 0.
        """
        check_tensor("token_types", token_types, dims=(1, 2), shape_hint="[B, S] or [T]")
        if token_types.dtype not in _INT_DTYPES:
            raise TypeError(f"token_types: expected an integer tensor, got {token_types.dtype}")
        if num_experts not in (1, 2):
            raise ValueError(
                f"num_experts: the token-type rule routes to 1 (video) or 2 (image) experts, got "
                f"{num_experts!r}; use Routing.from_expert_ids for other expert sets"
            )
        bad = (token_types != LANGUAGE_TOKEN_TYPE) & (token_types != VISION_TOKEN_TYPE)
        _check_values(
            bad, f"token_types: values must be {LANGUAGE_TOKEN_TYPE} or {VISION_TOKEN_TYPE}"
        )
        if num_experts == 1:
            ids = torch.zeros(token_types.numel(), dtype=torch.int32, device=token_types.device)
            return cls._build(ids, 1)
        t = token_types.unsqueeze(0) if token_types.dim() == 1 else token_types
        vis = t == VISION_TOKEN_TYPE
        nxt = torch.zeros_like(vis)
        nxt[:, :-1] = vis[:, 1:]
        mask = (vis & nxt).reshape(-1)
        if cu_seqlens is not None:
            if token_types.dim() != 1:
                raise ValueError("cu_seqlens: only with packed token_types [T]")
            check_tensor("cu_seqlens", cu_seqlens, dims=1)
            if cu_seqlens.dtype not in _INT_DTYPES or cu_seqlens.device != token_types.device:
                raise TypeError(
                    f"cu_seqlens: expected an integer tensor on {token_types.device}, got "
                    f"{cu_seqlens.dtype} on {cu_seqlens.device}"
                )
            # The last token of every packed sequence has no next token in its sequence.
            ends = (cu_seqlens[1:].to(torch.int64) - 1).clamp(min=0, max=max(mask.numel() - 1, 0))
            if mask.numel():
                mask = mask.index_fill(0, ends, False)
        return cls._build(mask.to(torch.int32), 2)

    @classmethod
    def _build(cls, ids: torch.Tensor, num_experts: int) -> Routing:
        """Counting sort of ``ids`` (int32 [T], values < E): O(T * E) elementwise, no sync."""
        experts = torch.arange(num_experts, device=ids.device, dtype=torch.int32)
        onehot = (ids.unsqueeze(0) == experts.unsqueeze(1)).to(torch.int32)  # [E, T]
        counts = onehot.sum(1, dtype=torch.int32)
        offsets = torch.zeros(num_experts + 1, dtype=torch.int32, device=ids.device)
        offsets[1:] = torch.cumsum(counts, 0)
        # rank of each token inside its expert group, in original order (stable)
        rank = (torch.cumsum(onehot, 1, dtype=torch.int32) - 1).gather(
            0, ids.long().clamp(0, num_experts - 1).unsqueeze(0)
        )[0]
        dest = offsets[ids.long().clamp(0, num_experts - 1)] + rank
        perm = torch.empty_like(ids)
        perm.scatter_(0, dest.long(), torch.arange(ids.numel(), device=ids.device, dtype=ids.dtype))
        return cls(expert_ids=ids, perm=perm, offsets=offsets, num_experts=num_experts)


def _check_values(bad: torch.Tensor, msg: str) -> None:
    """ValueError if any ``bad`` on CPU in eager mode; elsewhere (GPU, torch.compile) an
    asynchronous device assert, so building a Routing never waits for the device."""
    if bad.device.type == "cpu" and not torch.compiler.is_compiling():
        if bool(bad.any()):
            raise ValueError(msg)
    else:
        torch._assert_async(~bad.any(), msg)


def _check_num_experts(num_experts: object) -> int:
    e = check_int("num_experts", num_experts)
    if e > MAX_EXPERTS:
        raise ValueError(f"num_experts: at most {MAX_EXPERTS} experts are supported, got {e}")
    return e
