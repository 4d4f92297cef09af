"""The timed video -> answer pipeline, and its clock: what run, chat, demo, parity and the
end-to-end benchmarks share.

    decode video        `decode_clip` (PyAV, the template's frame policy), `decode_image` (an
                        image for the image model) or the caller's `VideoLoader` batch, timed on
                        the same `StageClock`
    patch embed         model.embed_patches(frames)        uint8 (or release-normalized) frames
    vision tower        model.run_vision_tower(x)
    compress + adapter  model.compress_and_adapt(x)        `encode`: the three stages above
    prefill             model.generate(..., timings=...): the prompt (and the first token)
    decode tokens       the rest of generation              `respond`: these two

`answer` is `encode` then `respond`; a chat encodes once and responds per turn. Both models have
these stage methods (and ``generate`` / ``stream`` with ``sampler=``) with the same signatures,
so nothing here asks which model it holds. Each stage is synchronized on a GPU; the prefill runs
once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.cogvlm2 import CogVLM2Config, PromptInputs
from ..models.cogvlm2.generate import check_context as check_lm_context
from ..models.cogvlm2.templates import IMAGE_POLICY, SAMPLING_POLICY
from ..tokens import build_position_ids
from ..video.image import load_image
from ..video.pyav import load_video
from ..video.sampling import FrameSelection

__all__ = [
    "IMAGE_SUFFIXES",
    "Answer",
    "StageClock",
    "answer",
    "check_context",
    "decode_clip",
    "decode_image",
    "encode",
    "is_image",
    "respond",
]

#: File name endings `haic run` / `haic chat` read as an image (Pillow), not a video.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


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


def is_image(path: str | Path) -> bool:
    """Whether ``path`` names an image file (by its ending, `IMAGE_SUFFIXES`)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def check_context(prompt: PromptInputs, config: CogVLM2Config, max_new_tokens: int) -> None:
    """ValueError when the prompt plus ``max_new_tokens`` runs past the model's positions
    (`generate.check_context`: ``TextConfig.position_limit``, 8192 for the releases)."""
    last = int(build_position_ids(prompt.token_type_ids).max())
    try:
        check_lm_context(config, last, max_new_tokens)
    except ValueError as e:
        raise ValueError(f"prompt too long: {len(prompt)} tokens; {e}") from None


def decode_clip(
    path: str | Path, config: CogVLM2Config, *, max_frames: int | None = None,
    clock: StageClock | None = None, policy: str | None = None, preprocess: str = "fast",
) -> tuple[torch.Tensor, FrameSelection]:  # fmt: skip
    """Frames of ``path`` (PyAV on the CPU; ``preprocess`` "fast": uint8 [F, S, S, 3],
    "release": float32 [F, 3, S, S]) sampled with ``policy`` (default: the config template's,
    `templates.SAMPLING_POLICY`; "image": one frame, for the image model), at most
    ``max_frames`` (default the config's), and the selection; timed as "decode video" on
    ``clock``. Raises `VideoDecodeError` for an unreadable file."""
    clock = clock or StageClock(torch.device("cpu"))
    policy = policy or SAMPLING_POLICY[config.template]
    if policy == IMAGE_POLICY:  # one picture: the middle frame of the clip
        policy, max_frames = "uniform", 1
    with clock.stage("decode video", "PyAV on CPU"):
        return load_video(path, policy=policy, size=config.vision.image_size,
                          max_frames=max_frames or config.max_frames,
                          preprocess=preprocess)  # fmt: skip


def decode_image(
    path: str | Path, config: CogVLM2Config, *, preprocess: str = "release",
    clock: StageClock | None = None,
) -> torch.Tensor:  # fmt: skip
    """The image at ``path`` as the image release reads it (`video.image.load_image`: Pillow
    bicubic to the config's image size, no crop; "release": float32 [1, 3, S, S], "fast": uint8
    [1, S, S, 3]); timed as "decode image". Raises `ImageLoadError` naming the file."""
    clock = clock or StageClock(torch.device("cpu"))
    with clock.stage("decode image", "Pillow on CPU"):
        return load_image(path, size=config.vision.image_size, preprocess=preprocess)


def encode(model: nn.Module, frames: torch.Tensor, clock: StageClock) -> torch.Tensor:
    """``frames`` -> vision embeddings, each stage timed on ``clock``: what `respond` takes
    (a chat encodes its video once and answers every turn from it)."""
    with torch.inference_mode():
        with clock.stage("patch embed"):
            x = model.embed_patches(frames)
        with clock.stage("vision tower"):
            x = model.run_vision_tower(x)
        with clock.stage("compress + adapter"):
            return model.compress_and_adapt(x)


def _reset_peak(clock: StageClock) -> None:
    if clock.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(clock.device)


def _peak(clock: StageClock) -> int | None:
    return torch.cuda.max_memory_allocated(clock.device) if clock.device.type == "cuda" else None


@torch.inference_mode()
def _generate(model, embeds, input_ids, token_type_ids, clock, max_new_tokens, eos_token_id,
              on_token, options) -> tuple[torch.Tensor, int]:  # fmt: skip
    """(tokens [B, n], decode steps after the first token), "prefill" and "decode tokens" on
    ``clock``; through ``model.stream`` when ``on_token`` wants each step as it comes."""
    kw = dict(vision_embeds=embeds, max_new_tokens=max_new_tokens, eos_token_id=eos_token_id)
    if on_token is None:
        t: dict[str, float] = {}
        tokens = model.generate(input_ids, token_type_ids, timings=t, **kw, **options)
        prefill_ms, decode_ms = t["prefill_s"] * 1e3, t["decode_s"] * 1e3
        steps = int(t["decode_tokens"]) // max(input_ids.shape[0], 1)
    else:
        got: list[torch.Tensor] = []
        clock.sync()
        t0 = t1 = time.perf_counter()
        for step in model.stream(input_ids, token_type_ids, **kw, **options):
            if not got:
                clock.sync()
                t1 = time.perf_counter()
            got.append(step)
            on_token(step)
        clock.sync()
        prefill_ms, decode_ms = (t1 - t0) * 1e3, (time.perf_counter() - t1) * 1e3
        tokens = torch.stack(got, 1) if got else input_ids[:, :0]
        steps = max(len(got) - 1, 0)
    clock.add("prefill", prefill_ms, f"{input_ids.shape[1]} tokens")
    clock.add("decode tokens", decode_ms, f"{steps} steps")
    return tokens, steps


def respond(
    model: nn.Module,
    vision_embeds: torch.Tensor | None,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    clock: StageClock,
    on_token: Callable[[torch.Tensor], None] | None = None,
    **options: object,
) -> Answer:
    """Generate for ``input_ids``/``token_type_ids`` [B, S] whose vision slots `encode`'s
    ``vision_embeds`` fill (None: a text-only prompt), timing the prefill and the decode on
    ``clock``. ``on_token``: called with each step's tokens int64 [B] as they are generated
    (``model.stream``); ``options`` go to the model (``sampler=``, the fast model's ``prune=``)."""
    _reset_peak(clock)
    tokens, steps = _generate(model, vision_embeds, input_ids, token_type_ids, clock,
                              max_new_tokens, eos_token_id, on_token, options)  # fmt: skip
    return Answer(tokens, clock, steps, _peak(clock))


def answer(
    model: nn.Module,
    frames: torch.Tensor,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int] | None,
    clock: StageClock | None = None,
    on_token: Callable[[torch.Tensor], None] | None = None,
    **options: object,
) -> Answer:
    """Generate for ``input_ids``/``token_type_ids`` [B, S] whose vision slots ``frames`` (uint8
    [N, H, W, 3] or release-normalized float [N, 3, H, W], every row's frames in order, on the
    model's device) fill, timing each stage: `encode`, then `respond` (``on_token``,
    ``options``: as there). ``eos_token_id``: one id or all of them (``config.eos_token_ids``)."""
    clock = clock or StageClock(frames.device)
    _reset_peak(clock)
    embeds = encode(model, frames, clock)
    tokens, steps = _generate(model, embeds, input_ids, token_type_ids, clock, max_new_tokens,
                              eos_token_id, on_token, options)  # fmt: skip
    return Answer(tokens, clock, steps, _peak(clock))
