"""The timed video -> answer pipeline, and its clock: what run, demo, parity and the end-to-end
benchmarks share.

    decode video        `decode_clip` (PyAV, the model's frame policy) or the caller's
                        `VideoLoader` batch, timed on the same `StageClock`
    patch embed         model.embed_patches(frames)        uint8 frames straight in
    vision tower        model.run_vision_tower(x)
    compress + adapter  model.compress_and_adapt(x)
    prefill             model.generate(..., timings=...): the prompt (and the first token)
    decode tokens       the rest of generation

Both models have these stage methods with the same signatures, so nothing here asks which
model it holds. Each stage is synchronized on a GPU; the prefill runs once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.cogvlm2 import CogVLM2Config, PromptInputs
from ..tokens import build_position_ids
from ..video.pyav import load_video
from ..video.sampling import FrameSelection

__all__ = ["Answer", "StageClock", "answer", "check_context", "decode_clip"]


class StageClock:
    """Wall-clock time per named stage, synchronized with the device before and after each."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.ms: dict[str, float] = {}
        self.notes: dict[str, str] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str, note: str = "") -> Iterator[None]:
        """Time the block as stage ``name`` (added to the stage's earlier time, if any)."""
        self.sync()
        t0 = time.perf_counter()
        yield
        self.sync()
        self.add(name, (time.perf_counter() - t0) * 1e3, note)

    def add(self, name: str, ms: float, note: str = "") -> None:
        self.ms[name] = self.ms.get(name, 0.0) + ms
        if note:
            self.notes[name] = note

    def report(self, title: str) -> str:
        """One line per stage: name, milliseconds, note."""
        width = max(len(n) for n in self.ms)
        lines = [title]
        lines += [f"  {n:<{width}}  {ms:9.1f} ms  {self.notes.get(n, '')}".rstrip()
                  for n, ms in self.ms.items()]  # fmt: skip
        return "\n".join(lines)


@dataclass
class Answer:
    """``tokens`` int64 [B, n_new]; ``clock`` with the model's stages; ``decode_steps``: steps
    after the first token; ``peak_mem_bytes``: CUDA peak over the call (None on the CPU)."""

    tokens: torch.Tensor
    clock: StageClock
    decode_steps: int
    peak_mem_bytes: int | None

    @property
    def decode_tokens_per_s(self) -> float | None:
        ms = self.clock.ms.get("decode tokens")
        steps = self.decode_steps * self.tokens.shape[0]
        return steps / (ms / 1e3) if ms and steps else None


def check_context(prompt: PromptInputs, config: CogVLM2Config, max_new_tokens: int) -> None:
    """ValueError when the prompt plus ``max_new_tokens`` runs past the model's positions."""
    limit = config.text.max_position_embeddings
    last = int(build_position_ids(prompt.token_type_ids).max())
    if last + max_new_tokens >= limit:
        raise ValueError(
            f"prompt too long: {len(prompt)} tokens reach position {last}, plus "
            f"--max-new-tokens {max_new_tokens} exceeds the context of "
            f"max_position_embeddings={limit}"
        )


def decode_clip(
    path: str | Path, config: CogVLM2Config, *, max_frames: int | None = None,
    clock: StageClock | None = None,
) -> tuple[torch.Tensor, FrameSelection]:  # fmt: skip
    """uint8 frames [F, S, S, 3] of ``path`` (PyAV on the CPU), sampled with the config's
    policy (at most ``max_frames``, default the config's), and the selection; timed as
    "decode video" on ``clock``. Raises `VideoDecodeError` for an unreadable file."""
    clock = clock or StageClock(torch.device("cpu"))
    with clock.stage("decode video", "PyAV on CPU"):
        return load_video(path, policy=config.template, size=config.vision.image_size,
                          max_frames=max_frames or config.max_frames)  # fmt: skip


@torch.inference_mode()
def answer(
    model: nn.Module,
    frames: torch.Tensor,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int | None,
    clock: StageClock | None = None,
    **options: object,
) -> Answer:
    """Generate for ``input_ids``/``token_type_ids`` [B, S] whose vision slots ``frames`` (uint8
    [N, H, W, 3], every row's frames in order, on the model's device) fill, timing each stage.
    ``options`` go to ``model.generate`` (e.g. the fast model's ``prune=``)."""
    clock = clock or StageClock(frames.device)
    if clock.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(clock.device)
    with clock.stage("patch embed"):
        x = model.embed_patches(frames)
    with clock.stage("vision tower"):
        x = model.run_vision_tower(x)
    with clock.stage("compress + adapter"):
        embeds = model.compress_and_adapt(x)
    t: dict[str, float] = {}
    tokens = model.generate(input_ids, token_type_ids, vision_embeds=embeds,
                            max_new_tokens=max_new_tokens, eos_token_id=eos_token_id,
                            timings=t, **options)  # fmt: skip
    clock.add("prefill", t["prefill_s"] * 1e3, f"{input_ids.shape[1]} tokens")
    clock.add("decode tokens", t["decode_s"] * 1e3)
    steps = int(t["decode_tokens"]) // max(input_ids.shape[0], 1)
    clock.notes["decode tokens"] = f"{steps} steps"
    peak = torch.cuda.max_memory_allocated(clock.device) if clock.device.type == "cuda" else None
    return Answer(tokens, clock, steps, peak)
