"""`haic run VIDEO`: one video in, the answer out, with each stage timed.

Shared with `haic run --manifest` (run.py): model choice (`select_model`: the fast model on a GPU,
the reference on the CPU unless ``--model fast``), the context check, and the timed pipeline
`answer_timed`: patch embed -> vision tower -> compress + adapter -> prefill -> greedy decode,
each stage synchronized and timed, plus peak GPU memory on CUDA. Nothing is printed until the
whole answer exists, so a failure never leaves a partial answer on stdout.
"""

from __future__ import annotations

import argparse
import inspect
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

MODELS = ("auto", "fast", "reference")


def check_context(prompt, config, max_new_tokens: int) -> None:
    """ValueError when the prompt plus ``max_new_tokens`` runs past the model's positions."""
    from .models.cogvlm2 import build_position_ids

    limit = config.text.max_position_embeddings
    last = int(build_position_ids(prompt.token_type_ids).max())
    if last + max_new_tokens >= limit:
        raise ValueError(
            f"prompt too long: {len(prompt)} tokens reach position {last}, plus "
            f"--max-new-tokens {max_new_tokens} exceeds the context of "
            f"max_position_embeddings={limit}"
        )


def select_model(args: argparse.Namespace, reference, device: torch.device):
    """(the model to run, "fast" | "reference"): ``--model auto`` is fast on CUDA."""
    choice = getattr(args, "model", "auto")
    if choice == "auto":
        choice = "fast" if device.type == "cuda" else "reference"
    if choice == "reference":
        return reference, "reference"
    try:
        from .models.cogvlm2.fast_model import FastCogVLM2
    except ImportError as e:
        raise SystemExit(f"haic run: --model fast: the fast model is not available ({e})") from e
    try:
        return FastCogVLM2.from_reference(reference, backend=args.backend).eval(), "fast"
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"haic run: --backend {args.backend}: {e}") from e


@dataclass
class Timed:
    token_ids: list[int]
    stages_ms: dict[str, float] = field(default_factory=dict)
    decode_tokens: int = 0
    peak_mem_bytes: int | None = None

    @property
    def decode_tokens_per_s(self) -> float | None:
        ms = self.stages_ms.get("decode tokens")
        return self.decode_tokens / (ms / 1e3) if ms and self.decode_tokens else None


class _Clock:
    def __init__(self, device: torch.device) -> None:
        self.device, self.ms = device, {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def stage(self, name: str):
        self.sync()
        t0 = time.perf_counter()
        yield
        self.sync()
        self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - t0) * 1e3


def _vision_stages(model, kind: str, frames_u8: torch.Tensor, dtype, clock: _Clock):
    from .models.cogvlm2 import normalize_frames

    if kind == "fast":
        with clock.stage("patch embed"):
            x = model.embed_patches(frames_u8)
        with clock.stage("vision tower"):
            x = model.run_vision_transformer(x)
        with clock.stage("compress + adapter"):
            return model.compress_and_adapt(x)
    vision = model.model.vision
    with clock.stage("patch embed"):
        x = vision.embed_patches(normalize_frames(frames_u8).to(dtype))
    with clock.stage("vision tower"):
        x = vision.run_transformer(x)
    with clock.stage("compress + adapter"):
        return vision.compress(x)


def _greedy(model, ids, types, vision_embeds, max_new: int, eos: int | None, clock: _Clock):
    """Prefill, then one token per step through the KV cache (greedy_generate's loop, timed)."""
    from .constants import LANGUAGE_TOKEN_TYPE

    with clock.stage("prefill"):
        res = model(ids, types, vision_embeds=vision_embeds, use_cache=True)
        nxt = res.logits[:, -1].argmax(-1)
    out = [nxt]
    finished = nxt == eos if eos is not None else torch.zeros_like(nxt, dtype=torch.bool)
    new_type = torch.full_like(nxt.unsqueeze(1), LANGUAGE_TOKEN_TYPE)
    steps = 0
    with clock.stage("decode tokens"):
        while len(out) < max_new and not (eos is not None and bool(finished.all())):
            res = model(
                nxt.unsqueeze(1), new_type, past_key_values=res.past_key_values, use_cache=True
            )
            nxt = res.logits[:, -1].argmax(-1)
            if eos is not None:
                nxt = torch.where(finished, torch.full_like(nxt, eos), nxt)
                finished |= nxt == eos
            out.append(nxt)
            steps += 1
    return torch.stack(out, dim=1), steps


def answer_timed(
    model, kind: str, config, frames_u8: torch.Tensor, prompt, *, device, dtype, max_new_tokens
) -> Timed:
    """Greedy answer for one video (uint8 frames [F, H, W, 3]) with per-stage times (ms)."""
    clock = _Clock(device)
    check_context(prompt, config, max_new_tokens)
    ids = prompt.input_ids.unsqueeze(0).to(device)
    types = prompt.token_type_ids.unsqueeze(0).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        frames_u8 = frames_u8.to(device)
        embeds = _vision_stages(model, kind, frames_u8, dtype, clock)
        gen = getattr(model, "generate", None) if kind == "fast" else None
        if gen is not None and "vision_embeds" in inspect.signature(gen).parameters:
            t: dict[str, Any] = {}
            new = gen(ids, types, vision_embeds=embeds, max_new_tokens=max_new_tokens,
                      eos_token_id=config.eos_token_id, timings=t)  # fmt: skip
            clock.ms["prefill"] = t["prefill_s"] * 1e3
            clock.ms["decode tokens"] = t["decode_s"] * 1e3
            steps = int(t["decode_tokens"]) // ids.shape[0]  # counted over the batch there
        else:
            new, steps = _greedy(
                model, ids, types, embeds, max_new_tokens, config.eos_token_id, clock
            )
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return Timed(new[0].tolist(), clock.ms, steps, peak)


def format_report(timed: Timed, *, decode_ms: float, decoder: str) -> str:
    rows = [("decode video", decode_ms, decoder)]
    notes = {"decode tokens": f"{timed.decode_tokens} steps"}
    rows += [(k, v, notes.get(k, "")) for k, v in timed.stages_ms.items()]
    width = max(len(r[0]) for r in rows)
    lines = ["stage timings (wall clock, synchronized; one run, first-call overheads included):"]
    lines += [f"  {n:<{width}}  {ms:9.1f} ms  {note}" for n, ms, note in rows]
    tps = timed.decode_tokens_per_s
    lines.append(f"  decode: {f'{tps:.1f} tokens/s' if tps else 'n/a (one token)'}")
    if timed.peak_mem_bytes is not None:
        lines.append(f"  peak GPU memory: {timed.peak_mem_bytes / 2**30:.2f} GiB")
    return "\n".join(lines)
