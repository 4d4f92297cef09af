"""What a model needs to know about a pruning policy: where it runs, what it needs, what it keeps.

A policy object (`Temporal`, `Salient`, `TextGuided`, or your own) satisfies `PrunePolicy`:

* ``where``: `BEFORE_LM` (tokens dropped before the first LM layer) or `IN_LM` (scored at LM
  layer ``layer``, dropped from layer ``layer + 1`` on; such a policy also has ``layer`` and
  ``query_rows(layout)``, the query rows whose attention scores the tokens). Frame-dropping
  policies that run before the vision tower are planned (DESIGN.md) but none exists yet;
* ``needs``: the inputs it reads, among ``"vision_embeds"`` (the LM-input rows of every frame),
  ``"cls_scores"`` (the vision tower's last-layer CLS attention, pooled per LM patch token) and
  ``"lm_scores"`` (an LM layer's ``key_scores``); the model produces exactly those;
* ``kept(counts)``: how many tokens each row keeps, from host-side `TokenCounts` alone (the
  kept counts depend only on the layout, never on the scores), so a model sizes its packed
  batch before running the stage and never reads the counts back from the device;
* ``__call__(layout, **inputs)``: the stage itself, a `PruneResult`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from haic_kernels.ops.token_prune.api import keep_counts
from haic_kernels.pruning.layout import TokenLayout

__all__ = ["BEFORE_LM", "IN_LM", "WHERE", "PrunePolicy", "TokenCounts"]

BEFORE_LM = "before_lm"
IN_LM = "in_lm"
WHERE = (BEFORE_LM, IN_LM)


@runtime_checkable
class PrunePolicy(Protocol):
    """The protocol (see the module docstring)."""

    @property
    def where(self) -> str: ...

    @property
    def needs(self) -> tuple[str, ...]: ...

    def validate(self, num_layers: int) -> None: ...

    def kept(self, counts: TokenCounts) -> TokenCounts | None: ...

    def __call__(self, layout: TokenLayout, **inputs: object) -> object: ...


def _keep(n: Sequence[int], keep_ratio: float) -> list[int]:
    """`keep_counts` on host ints (a CPU tensor: the very rule the selection applies)."""
    return keep_counts(torch.tensor(list(n), dtype=torch.long), keep_ratio).tolist() if n else []


@dataclass(frozen=True)
class TokenCounts:
    """Host-side token counts of a batch, per row, from which a stage's kept counts follow.

    ``fixed[b]``: row b's tokens no policy drops (text, boi, eoi); ``patches[b]``: its patch
    tokens; ``frames[b]``: the patch tokens of each of its frames, or None where an earlier
    per-video stage made that split depend on the scores (only its total is known then);
    ``vision[b]``: its vision-type tokens (boi, patches, eoi).
    """

    fixed: tuple[int, ...]
    patches: tuple[int, ...]
    frames: tuple[tuple[int, ...] | None, ...]
    vision: tuple[int, ...]

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(f + p for f, p in zip(self.fixed, self.patches))

    @classmethod
    def unpruned(
        cls, lengths: Sequence[int], vision_tokens: Sequence[int], tokens_per_frame: int
    ) -> TokenCounts:
        """Rows of ``lengths`` tokens, ``vision_tokens`` of them (frames of ``tokens_per_frame``
        tokens: boi, patches, eoi; a layout that is not is refused by `TokenLayout`)."""
        n = tokens_per_frame - 2
        frames = tuple((n,) * (v // tokens_per_frame) for v in vision_tokens)
        patches = tuple(sum(f) for f in frames)
        fixed = tuple(s - p for s, p in zip(lengths, patches))
        return cls(fixed, patches, frames, tuple(vision_tokens))

    @classmethod
    def from_layout(cls, layout: TokenLayout) -> TokenCounts:
        """The counts of ``layout`` as it is (reads them back from its device: one sync)."""
        patch = layout.patch
        per_frame = torch.bincount(layout.frame[patch], minlength=layout.num_frames)
        host = torch.cat([layout.lengths, patch.sum(1), layout.cu_frames, per_frame]).tolist()
        b = layout.batch_size
        lengths, patches, cu = host[:b], host[b : 2 * b], host[2 * b : 3 * b + 1]
        per = host[3 * b + 1 :]
        frames = tuple(tuple(per[cu[i] : cu[i + 1]]) for i in range(b))
        vision = tuple(p + 2 * (cu[i + 1] - cu[i]) for i, p in enumerate(patches))
        return cls(tuple(s - p for s, p in zip(lengths, patches)), tuple(patches), frames, vision)

    def after(
        self, keep_ratio: float, per: str, *, full_first_frame: bool = False
    ) -> TokenCounts | None:
        """The counts after a stage keeping ``ceil(keep_ratio * n)`` of each segment's n patches
        (segments: each row, ``per="video"``, or each frame, ``per="frame"``; with
        ``full_first_frame`` a row's first frame keeps everything), as `select_candidates`
        selects. None when ``per="frame"`` meets a row whose frames are not known."""
        if per == "video":
            kept = _keep(self.patches, keep_ratio)
            # Where the split over frames does not depend on the scores, it stays known.
            frames = tuple(
                f if k == p else (k,) if f is not None and len(f) == 1 else None
                for f, k, p in zip(self.frames, kept, self.patches)
            )
            return self._kept(tuple(kept), frames)
        if any(f is None for f in self.frames):
            return None
        frames = []
        for f in self.frames:
            k = _keep(f, keep_ratio)
            if full_first_frame and f:
                k[0] = f[0]
            frames.append(tuple(k))
        return self._kept(tuple(sum(f) for f in frames), tuple(frames))

    def _kept(self, patches: tuple[int, ...], frames: tuple) -> TokenCounts:
        vision = tuple(v - p + k for v, p, k in zip(self.vision, self.patches, patches))
        return TokenCounts(self.fixed, patches, frames, vision)
