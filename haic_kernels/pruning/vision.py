"""Token reduction inside the vision tower: `StaticPatches` (before it) and `VisionMerge` (in it).

The tower's cost is ~60% of time to first token, and the LM-side policies cannot touch it. Two
published ways cut it, adapted to CogVLM2's constraint that ``conv_compress`` needs every
frame's full grid after the tower:

* `StaticPatches(threshold)` (run-length tokenization, Choudhury et al., NeurIPS 2024): a patch
  whose uint8 pixels all lie within ``threshold`` of the same patch of the previous sampled frame
  of its video (`patch_difference`) never enters the tower; after the tower its position takes
  the output of that position in the previous frame (filled frame by frame, so a patch static
  for several frames takes the last computed one). A video's first frame and CLS always run.
* `VisionMerge(r, layers)` (ToMe, Bolya et al., ICLR 2023): in each listed block, between the
  attention and the MLP, ToMe's bipartite soft matching on the attention keys (head mean)
  merges the ``r`` most similar token pairs of every frame (size-weighted means); attention
  afterwards adds ``log(size)`` to each key's logit (proportional attention). ``r`` larger than
  a frame allows is CLAMPED to ``max_merges(n) = (n - 1) // 2`` for a frame of n tokens (its A
  set without CLS), frame by frame, as ToMe does. After the tower every position gets its merged
  token's value (unmerge).

Frames then hold different token counts: the tower runs packed (`TowerTokens`: rows [T, Dv],
``cu_seqlens`` over frames, varlen attention). The LM sees every position again, so for the
pruning protocol these policies keep every token (``kept`` is the identity); they compose with
the LM-side policies in a `Compose`.

`plan_vision` reads a model's ``prune=`` option; `pack`, `merge_step`, `restore` and
`restore_scores` are the token flow the fast model runs (the reference model's per-frame
implementation is ``models.cogvlm2.vision_reduce``); `tower_flops` is the FLOP model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch

from haic_kernels.ops._common import check_int
from haic_kernels.ops.token_merge import max_merges, patch_difference
from haic_kernels.ops.token_merge.api import merge_step_unchecked
from haic_kernels.ops.token_prune import gather_rows
from haic_kernels.pruning.protocol import BEFORE_VISION, IN_VISION, TokenCounts

__all__ = ["StaticPatches", "TowerTokens", "VisionMerge", "VisionReduction", "cu_frames_of",
           "lm_policies", "merge_counts", "merge_plans", "merge_step", "pack", "plan_vision",
           "predict_trace",
           "restore", "restore_scores", "static_keep", "tower_flops"]  # fmt: skip


@dataclass(frozen=True)
class StaticPatches:
    """Skip patches that repeat the previous sampled frame (see the module docstring).

    ``threshold``: int in [0, 255]; a patch is dropped when ``max |pixel - previous pixel|``
    over its pixels and channels is <= threshold (0: only exact repeats). Needs uint8 frames."""

    threshold: int
    where: ClassVar[str] = BEFORE_VISION
    needs: ClassVar[tuple[str, ...]] = ("frames",)

    def __post_init__(self) -> None:
        check_int("threshold", self.threshold, minimum=0, maximum=255)

    def validate(self, num_layers: int) -> None:
        """Nothing depends on the LM's depth."""

    def kept(self, counts: TokenCounts) -> TokenCounts:
        return counts  # every dropped patch is filled after the tower

    def __call__(self, layout: object, **inputs: object) -> object:
        raise TypeError("StaticPatches runs before the vision tower: the model applies it")


@dataclass(frozen=True)
class VisionMerge:
    """ToMe inside the vision tower (see the module docstring).

    ``r``: token pairs merged per frame in each listed block (>= 1; clamped per frame to
    ``(n - 1) // 2``); ``layers``: the vision blocks that merge (None: every block)."""

    r: int
    layers: tuple[int, ...] | None = None
    where: ClassVar[str] = IN_VISION
    needs: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check_int("r", self.r, minimum=1)
        if self.layers is not None:
            if not isinstance(self.layers, (tuple, list)) or not self.layers:
                raise ValueError(f"layers: expected a non-empty tuple of ints, got {self.layers!r}")
            for i in self.layers:
                check_int("layers[i]", i, minimum=0)
            if len(set(self.layers)) != len(self.layers):
                raise ValueError(f"layers: repeated block in {self.layers!r}")
            object.__setattr__(self, "layers", tuple(sorted(self.layers)))

    def validate(self, num_layers: int) -> None:
        """Nothing depends on the LM's depth (`plan_vision` checks ``layers`` on the tower)."""

    def kept(self, counts: TokenCounts) -> TokenCounts:
        return counts  # every merged token is unmerged after the tower

    def __call__(self, layout: object, **inputs: object) -> object:
        raise TypeError("VisionMerge runs inside the vision tower: the model applies it")

    def merges_at(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers


@dataclass(frozen=True)
class VisionReduction:
    """The vision-tower stages of a ``prune=`` option: at most one of each kind."""

    static: StaticPatches | None = None
    merge: VisionMerge | None = None


def plan_vision(prune: object, num_vision_layers: int) -> VisionReduction | None:
    """The `VisionReduction` of a model's ``prune=`` option (None: no vision-tower stage);
    ``VisionMerge.layers`` checked against ``num_vision_layers``."""
    policies = getattr(prune, "policies", None)
    policies = list(policies) if policies is not None else ([] if prune is None else [prune])
    static = [p for p in policies if isinstance(p, StaticPatches)]
    merge = [p for p in policies if isinstance(p, VisionMerge)]
    if len(static) > 1 or len(merge) > 1:
        raise ValueError("prune: at most one StaticPatches and one VisionMerge")
    if not static and not merge:
        return None
    if merge and merge[0].layers is not None and merge[0].layers[-1] >= num_vision_layers:
        raise ValueError(
            f"VisionMerge.layers: blocks must lie in [0, {num_vision_layers}) (the vision "
            f"tower's depth), got {merge[0].layers!r}"
        )
    return VisionReduction(static[0] if static else None, merge[0] if merge else None)


def lm_policies(prune: object) -> object:
    """``prune`` without its vision-tower policies (None if nothing is left): what a model run
    on vision embeds from an already reduced tower takes."""
    policies = getattr(prune, "policies", None)
    if policies is None:
        return None if isinstance(prune, (StaticPatches, VisionMerge)) else prune
    rest = tuple(p for p in policies if not isinstance(p, (StaticPatches, VisionMerge)))
    return None if not rest else rest[0] if len(rest) == 1 else type(prune)(rest)


def cu_frames_of(
    vision_tokens: Sequence[int], tokens_per_frame: int, device: torch.device
) -> torch.Tensor:
    """int32 [B+1]: the frames of each row (``vision_tokens[b] // tokens_per_frame`` of them)."""
    return _cu([v // tokens_per_frame for v in vision_tokens], device)


def static_keep(
    frames: torch.Tensor, threshold: int, patch: int, cu_frames: torch.Tensor | None = None
) -> torch.Tensor:
    """bool [N, 1 + P] (CLS first): the tokens `StaticPatches` runs: CLS, every token of a
    video's first frame, and each patch whose `patch_difference` exceeds ``threshold``."""
    if frames.dtype != torch.uint8:
        raise ValueError(
            f"StaticPatches: needs uint8 frames [N, S, S, 3] (it compares pixels), got "
            f"{frames.dtype}"
        )
    score = patch_difference(frames, patch, cu_frames=cu_frames)
    cls = torch.ones(score.shape[0], 1, dtype=torch.bool, device=score.device)
    return torch.cat([cls, score > threshold], dim=1)


@dataclass
class TowerTokens:
    """Packed frames inside the vision tower.

    ``x`` [T, Dv]; ``cu_seqlens`` int32 [N+1] (device) with ``lengths`` (host) and
    ``max_seqlen``; ``sizes`` float32 [T] (original tokens per row; None while all are 1);
    ``rows`` int64 [N, L]: the row holding each (frame, position) (undefined where dropped);
    ``source`` int64 [N, L]: the frame whose output fills each position (itself where kept);
    ``trace``: per block run, (rows in attention, sum of squared frame lengths, rows in MLP);
    ``bias``: ``log(sizes)``, taken once per merging step (None while all sizes are 1).
    """

    x: torch.Tensor
    cu_seqlens: torch.Tensor
    lengths: list[int]
    sizes: torch.Tensor | None
    rows: torch.Tensor
    source: torch.Tensor
    trace: list[tuple[int, int, int]] = field(default_factory=list)
    bias: torch.Tensor | None = None

    @property
    def max_seqlen(self) -> int:
        return max(self.lengths, default=0)

    @property
    def key_bias(self) -> torch.Tensor | None:
        """float32 [T]: ``log(size)`` of each row, ToMe's proportional attention (None: 0)."""
        return self.bias


def _cu(lengths: Sequence[int], device: torch.device) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(list(lengths), dtype=torch.int32).cumsum(0)
    return cu.to(device)


def pack(x: torch.Tensor, keep: torch.Tensor | None = None) -> TowerTokens:
    """[N, L, Dv] (and the kept tokens, bool [N, L]) -> `TowerTokens`. With ``keep``, the kept
    counts are read to the host (one sync: the packed size depends on the pixels)."""
    n, length, d = x.shape
    flat = x.reshape(n * length, d)
    frame = torch.arange(n, device=x.device)[:, None].expand(n, length)
    if keep is None:
        rows = torch.arange(n * length, device=x.device).view(n, length)
        return TowerTokens(flat, _cu([length] * n, x.device), [length] * n, None, rows,
                           frame.contiguous())  # fmt: skip
    lengths = keep.sum(1).tolist()
    idx = keep.reshape(-1).nonzero().squeeze(1)
    rows = (torch.cumsum(keep.reshape(-1).to(torch.long), 0) - 1).view(n, length)
    # The latest frame (up to this one) that computed the position; every video's first frame
    # computes all, so this never crosses into the previous video.
    source = torch.where(keep, frame, -1).cummax(dim=0).values
    return TowerTokens(gather_rows(flat, idx), _cu(lengths, x.device), lengths, None, rows,
                       source)  # fmt: skip


def merge_counts(lengths: Sequence[int], r: int) -> list[int]:
    """Merges per frame of one `merge_step` (``r`` clamped to `max_merges`)."""
    return [min(r, max_merges(n)) for n in lengths]


def merge_plans(
    lengths: Sequence[int], merge: VisionMerge, num_layers: int, device: torch.device
) -> list[torch.Tensor | None]:
    """Per block of a tower of ``num_layers`` whose frames enter with ``lengths`` tokens: the
    device half of that block's `merge_step` (int32 [2N + 1]: r per frame, then the new
    cu_seqlens) or None where it merges nothing. Every count is known on the host from the
    start, so the whole tower's go to the device in one copy, not two per merging block."""
    n, rows, at = list(lengths), [], []
    for i in range(num_layers):
        merges = merge_counts(n, merge.r) if merge.merges_at(i) else []
        if any(merges):
            n = [x - m for x, m in zip(n, merges)]
            at.append(i)
            rows.append(torch.tensor([*merges, 0, *n], dtype=torch.int32))
    plans: list[torch.Tensor | None] = [None] * num_layers
    if rows:
        table = torch.stack(rows)
        table[:, len(n) + 1 :] = table[:, len(n) + 1 :].cumsum(1)  # lengths -> cu_seqlens
        if device.type == "cuda":  # pinned: the copy neither stages nor waits for the stream
            table = table.pin_memory()
        table = table.to(device, non_blocking=True)
        for j, i in enumerate(at):
            plans[i] = table[j]
    return plans


def merge_step(
    tokens: TowerTokens,
    h: torch.Tensor,
    k: torch.Tensor,
    r: int,
    backend: str = "auto",
    plan: torch.Tensor | None = None,
) -> TowerTokens:
    """One ToMe step on the block's ``h`` [T, Dv] with metric the keys ``k`` [T, H, Dh] (mean
    over heads, taken inside the op): `bipartite_match`, `merge_packed` and the unmerge map's
    step in one op (its unchecked entry point: the arguments are built here; Triton: four
    launches). ``plan``: this block's entry of `merge_plans` (None: built here, one
    host-to-device copy). Returns the new `TowerTokens` (x = the merged ``h``)."""
    merges = merge_counts(tokens.lengths, r)
    if not any(merges):
        return replace(tokens, x=h)
    dev = h.device
    nf = len(merges)
    lengths = [n - m for n, m in zip(tokens.lengths, merges)]
    if plan is None:
        plan = merge_plans(tokens.lengths, VisionMerge(r), 1, dev)[0]
    elif plan.shape != (2 * nf + 1,):
        raise ValueError(
            f"plan: expected int32 [{2 * nf + 1}] (r and cu_seqlens of {nf} frames, from "
            f"merge_plans), got shape {tuple(plan.shape)}"
        )
    # Valid by construction (host counts, clamped r): the unchecked entry point skips the
    # device-side value checks (see ops.token_merge.api).
    x, sizes, rows = merge_step_unchecked(
        h.contiguous(), k, tokens.sizes, tokens.cu_seqlens, plan[nf:], plan[:nf],
        tokens.rows, tokens.max_seqlen, sum(lengths), max(lengths), backend,
    )  # fmt: skip
    return TowerTokens(x, plan[nf:], lengths, sizes, rows, tokens.source, tokens.trace,
                       sizes.log())  # fmt: skip


def _final_rows(tokens: TowerTokens) -> torch.Tensor:
    """int64 [N * L]: the row each (frame, position) takes its output from."""
    pos = torch.arange(tokens.rows.shape[1], device=tokens.rows.device)
    return tokens.rows[tokens.source, pos[None, :]].reshape(-1)


def restore(tokens: TowerTokens, num_positions: int) -> torch.Tensor:
    """`TowerTokens` -> [N, L, Dv]: unmerge (each position its merged token's value) and fill
    (a dropped patch the output of the last frame that computed it)."""
    out = gather_rows(tokens.x, _final_rows(tokens))
    return out.view(-1, num_positions, tokens.x.shape[-1])


def restore_scores(tokens: TowerTokens, scores: torch.Tensor) -> torch.Tensor:
    """Per-row CLS attention [T] -> per position float32 [N, L]: a merged token's mass split
    evenly over its sizes' positions; a dropped patch that of the position it is filled from."""
    idx = _final_rows(tokens)
    s = scores.to(torch.float32)
    if tokens.sizes is not None:
        s = s / tokens.sizes
    return s[idx].view(tokens.rows.shape)


def predict_trace(
    num_layers: int, lengths: Sequence[int], merge: VisionMerge | None
) -> list[tuple[int, int, int]]:
    """The `TowerTokens.trace` a tower of ``num_layers`` blocks runs for frames of ``lengths``
    tokens entering it (after `StaticPatches`, if any) under ``merge``: the FLOP model's input."""
    n = list(lengths)
    trace = []
    for i in range(num_layers):
        attn = (sum(n), sum(x * x for x in n))
        if merge is not None and merge.merges_at(i):
            n = [x - m for x, m in zip(n, merge_counts(n, merge.r))]
        trace.append((*attn, sum(n)))
    return trace


def tower_flops(hidden: int, intermediate: int, trace: Sequence[tuple[int, int, int]]) -> float:
    """Multiply-add FLOPs (x2) of the vision blocks of ``trace`` (`TowerTokens.trace`): QKV and
    output projections and the MLP per row, ``QK^T`` and ``PV`` per pair of a frame's rows."""
    total = 0.0
    for attn_rows, sq, mlp_rows in trace:
        total += 2.0 * attn_rows * 4 * hidden * hidden  # QKV (3 D^2) + dense (D^2)
        total += 2.0 * 2 * sq * hidden  # QK^T and PV
        total += 2.0 * mlp_rows * 2 * hidden * intermediate
    return total
