"""`Routing`: which expert each token uses, grouped for the expert_linear grouped GEMM.

Built once per forward on the tokens' device with tensor ops only (no ``.item()``, no host
sync), so every decoder layer reuses it and a CUDA graph can capture it. Which token uses which
expert is the model's rule (CogVLM's lives in ``haic_kernels.tokens``); the constructors here
take its result. Holds:

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

from haic_kernels.ops._common import (
    INT_DTYPES,
    check_cu_seqlens,
    check_int,
    check_same_device,
    check_tensor,
    check_values,
)

__all__ = ["MAX_EXPERTS", "Routing"]

# The kernel selects an expert's weight with a fixed chain of 7 comparisons (one per extra
# expert): 8 experts covers CogVLM (2) and small MoE-style adapter sets.
MAX_EXPERTS = 8


@dataclass(frozen=True, eq=False)
class Routing:
    """Tokens grouped by expert for `expert_linear` (see the module docstring for the fields).

    Build one with `from_expert_ids` or `from_vision_mask`. The raw constructor
    ``Routing(expert_ids=, perm=, offsets=, num_experts=)`` validates what the kernels rely on
    (offsets from 0 to T, ``perm`` a permutation of ``0..T-1`` grouping the tokens by their
    ``expert_ids``): eagerly for CPU tensors, by asynchronous device asserts for CUDA ones (no
    host sync; the kernels clamp every index meanwhile). Fields become contiguous int32.
    """

    expert_ids: torch.Tensor
    perm: torch.Tensor
    offsets: torch.Tensor
    num_experts: int

    def __post_init__(self) -> None:
        e = _check_num_experts(self.num_experts)
        ids = check_tensor("expert_ids", self.expert_ids, dims=1, dtypes=INT_DTYPES)
        perm = check_tensor("perm", self.perm, dims=1, dtypes=INT_DTYPES)
        check_tensor("offsets", self.offsets, dims=1, dtypes=INT_DTYPES)
        check_same_device(expert_ids=ids, perm=perm, offsets=self.offsets)
        t = ids.shape[0]
        if perm.shape[0] != t:
            raise ValueError(f"perm: expected {t} entries (one per token), got {perm.shape[0]}")
        if self.offsets.shape[0] != e + 1:
            raise ValueError(
                f"offsets: expected {e + 1} entries (num_experts + 1), got {self.offsets.shape[0]}"
            )
        offsets = check_cu_seqlens("offsets", self.offsets, t, ids.device, what="tokens")
        ids, perm = ids.to(torch.int32).contiguous(), perm.to(torch.int32).contiguous()
        check_values((ids >= 0) & (ids < e), f"expert_ids: every id must be in [0, {e})")
        in_range = (perm >= 0) & (perm < t)
        check_values(in_range, f"perm: entries must lie in [0, {t}) (token indices)")
        safe = torch.where(in_range, perm, 0).long()
        hits = torch.zeros(t, dtype=torch.int32, device=ids.device).index_add_(
            0, safe, torch.ones_like(perm)
        )
        check_values(hits == 1, "perm: must be a permutation (every token exactly once)")
        slot = torch.arange(t, device=ids.device, dtype=torch.int32)
        group = torch.searchsorted(offsets[1:], slot, right=True).clamp(max=e - 1)
        check_values(
            ids[safe] == group,
            "perm: must group the tokens by expert (perm[offsets[e]:"
            "offsets[e+1]] are the tokens whose expert_ids is e)",
        )
        object.__setattr__(self, "expert_ids", ids)
        object.__setattr__(self, "perm", perm)
        object.__setattr__(self, "offsets", offsets)

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
        if expert_ids.dtype not in INT_DTYPES:
            raise TypeError(f"expert_ids: expected an integer tensor, got {expert_ids.dtype}")
        ids = expert_ids.reshape(-1)
        ok = (ids >= 0) & (ids < e)
        check_values(ok, f"expert_ids: every id must be in [0, {e}) (num_experts={e})")
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
        # Correct by construction: skip the constructor's checks (a few kernels per forward).
        route = object.__new__(cls)
        for name, value in (("expert_ids", ids.contiguous()), ("perm", perm),
                            ("offsets", offsets), ("num_experts", num_experts)):  # fmt: skip
            object.__setattr__(route, name, value)
        return route


def _check_num_experts(num_experts: object) -> int:
    e = check_int("num_experts", num_experts)
    if e > MAX_EXPERTS:
        raise ValueError(f"num_experts: at most {MAX_EXPERTS} experts are supported, got {e}")
    return e
