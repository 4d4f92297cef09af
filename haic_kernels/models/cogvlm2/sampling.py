"""Next-token choice with the semantics of Hugging Face's logits processors; greedy by default.

`SamplingParams` (frozen, every field validated) builds a `Sampler`, a callable
``sampler(logits fp32 [B, V], seen int64 [B, L]) -> int64 [B]`` that both decode loops take
(``sampler=``; the reference `generate.generate` and the fast model's). ``seen`` holds the ids
seen so far in each row (prompt + generated), ``-1`` where a row is padded.

The steps, in HF's order (``generate`` builds repetition penalty first, then the warpers
temperature, top-k, top-p), each as HF defines it::

    repetition_penalty p: for every id in seen, s = s * p if s < 0 else s / p  (once per id)
    do_sample False: argmax (HF ignores temperature / top-k / top-p when not sampling)
    temperature t:  s = s / t
    top_k k:        s = -inf where s < (k-th largest s)      (ties kept; k = 0 disables)
    top_p q:        sort ascending, c = cumsum(softmax); drop where c <= 1 - q, always keeping the
                    largest                                                (q = 1 disables)
    sample:         multinomial(softmax(s)) with the sampler's own generator (``seed``)

The release demos decode greedily (``top_k=1``), so ``SamplingParams()`` is greedy.
The CLI's sampling flags (``--temperature``, ``--top-p``, ...) are to call `SamplingParams`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to choose each next token; see this module's docstring for the formulas.

    ``do_sample``: False = greedy (after the repetition penalty); True = sample from the
    distribution shaped by ``temperature`` (> 0), ``top_k`` (>= 0, 0 = off) and ``top_p``
    ((0, 1], 1 = off). ``repetition_penalty`` (> 0, 1 = off) applies in both modes. ``seed``
    (int >= 0 or None) seeds the sampler's generator, so a run repeats exactly.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be a bool, got {self.do_sample!r}")
        for name in ("temperature", "repetition_penalty", "top_p"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
            if v <= 0:
                raise ValueError(f"{name} must be > 0, got {v!r}")
        if self.top_p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        seed = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")

    @property
    def greedy(self) -> bool:
        return not self.do_sample

    def sampler(self) -> Sampler:
        """A fresh `Sampler` (its generator seeded with ``seed``)."""
        return Sampler(self)


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """HF's ``RepetitionPenaltyLogitsProcessor``: each id present in a row of ``seen`` (``-1`` =
    padding, ignored) has its score divided by ``penalty`` if positive, multiplied if negative."""
    if penalty == 1.0 or seen.shape[1] == 0:
        return logits
    b, v = logits.shape
    hit = torch.zeros(b, v + 1, dtype=torch.bool, device=logits.device)
    idx = torch.where(seen >= 0, seen, v)  # padding goes to a spare column
    hit.scatter_(1, idx, True)
    hit = hit[:, :v]
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(hit, penalized, logits)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """HF's ``TopKLogitsWarper``: -inf below the k-th largest score (ties kept; 0 = off)."""
    if k == 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """HF's ``TopPLogitsWarper``: keep the smallest high-probability set whose mass exceeds
    ``1 - p`` from below, always the most likely id (1 = off)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= (1 - p)
    drop[..., -1:] = False
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


class Sampler:
    """``sampler(logits, seen) -> next ids``; built by `SamplingParams.sampler`.

    Args (per call):
        logits: float32 ``[B, V]``, the last position's scores.
        seen: int64 ``[B, L]``, prompt + generated ids per row; ``-1`` marks padding (ignored).

    Returns int64 ``[B]`` on ``logits.device``. The generator lives on that device and is
    seeded once, at the first call, from ``params.seed`` (None: a random seed). Only shapes,
    dtypes and devices are checked per call (no host sync: the decode loop calls it every step).
    """

    def __init__(self, params: SamplingParams) -> None:
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        self.params = params
        self._generator: torch.Generator | None = None

    def _gen(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            g = torch.Generator(device=device)
            if self.params.seed is None:
                g.seed()
            else:
                g.manual_seed(self.params.seed)
            self._generator = g
        return self._generator

    def process(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """The scores after every step but the final choice (what HF's processors return)."""
        p = self.params
        scores = apply_repetition_penalty(logits, seen, p.repetition_penalty)
        if p.greedy:
            return scores
        if p.temperature != 1.0:
            scores = scores / p.temperature
        return apply_top_p(apply_top_k(scores, p.top_k), p.top_p)

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            got = getattr(logits, "shape", logits)
            raise ValueError(f"logits must be a [B, V] tensor, got {got}")
        if logits.dtype != torch.float32:
            raise ValueError(f"logits must be float32, got {logits.dtype}")
        if not isinstance(seen, torch.Tensor) or seen.dim() != 2 or seen.dtype != torch.int64:
            raise ValueError("seen must be an int64 [B, L] tensor (-1 = padding)")
        if seen.shape[0] != logits.shape[0] or seen.device != logits.device:
            raise ValueError(
                f"seen must have logits' batch size {logits.shape[0]} and device "
                f"{logits.device}, got {tuple(seen.shape)} on {seen.device}"
            )
        scores = self.process(logits, seen)
        if self.params.greedy:
            return scores.argmax(dim=-1)
        probs = scores.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=self._gen(logits.device)).squeeze(1)


GREEDY = SamplingParams()
