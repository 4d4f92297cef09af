"""Every call the benchmarks and the launch counter make on the models, in one place.

The fast model's redesign renames its entry points; this module is the one to follow it
(`quick` and `launches` call nothing else on a model). Used: `CogVLM2ForCausalLM`,
`FastCogVLM2.from_reference`, ``embed_patches`` / ``run_vision_transformer`` /
``compress_and_adapt`` / ``encode_frames``, ``generate`` (fast), ``forward`` with a KV cache
(reference, through `run_video._greedy`), ``model.vision.transformer.layers`` and
``model.layers``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from haic_kernels.bench.e2e import build_reference
from haic_kernels.models.cogvlm2 import ByteTokenizer, build_prompt, get_config, stack_prompts
from haic_kernels.models.cogvlm2.fast_model import FastCogVLM2
from haic_kernels.run_video import _Clock, _greedy, _vision_stages

__all__ = ["Models", "build", "encode", "generate", "one_pass", "prompts", "random_frames"]


class Models:
    """A reference model and a fast model sharing its weights, and their config."""

    def __init__(self, config, reference: torch.nn.Module, fast: torch.nn.Module) -> None:
        self.config, self.reference, self.fast = config, reference, fast

    @property
    def lm_layers(self) -> Sequence[torch.nn.Module]:
        return self.fast.model.layers

    @property
    def vision_layers(self) -> Sequence[torch.nn.Module]:
        return list(self.fast.model.vision.transformer.layers)


def build(size: str, variant: str, dtype: torch.dtype, frames: int, device: torch.device,
          backend: str = "auto") -> Models:  # fmt: skip
    """Both models with random timing weights, built on ``device`` in ``dtype``.

    Drawn on the device in a second (`init_random_weights` draws on the host: a minute at full
    size): the modules' own initialization, then N(0, 0.02) for everything but norm weights
    (left at 1), so no parameter is left uninitialized."""
    config = get_config(size, variant, max_frames=frames)
    ref = build_reference(config, device, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            owner = name.split(".")[-2] if "." in name else ""
            if "norm" not in owner:
                p.normal_(0.0, 0.02, generator=gen)
    ref.eval()
    return Models(config, ref, FastCogVLM2.from_reference(ref, backend=backend).eval())


def random_frames(config, frames: int, device: torch.device) -> torch.Tensor:
    """uint8 [frames, S, S, 3], as a video decoder hands them over."""
    s = config.vision.image_size
    return torch.randint(0, 256, (frames, s, s, 3), dtype=torch.uint8, device=device)


def prompts(config, frames: int, device: torch.device, queries: Sequence[str] = ("What?",)):
    """One (input_ids [1, S], token_type_ids [1, S]) per query (lengths differ with the query)."""
    tok = ByteTokenizer()
    return [tuple(t.to(device) for t in stack_prompts([build_prompt(tok, q, frames, config)]))
            for q in queries]  # fmt: skip


def encode(fast, frames: torch.Tensor) -> torch.Tensor:
    """Frames -> vision embeddings [F, tokens per frame, D] through the fast vision path."""
    with torch.inference_mode():
        return fast.encode_frames(frames)


def generate(fast, rows, embeds: torch.Tensor, new_tokens: int, *, cuda_graph: bool = False):
    """Greedy tokens of the fast model for ``rows`` [(ids [1, S], types [1, S]), ...]: one row
    dense, several packed (ragged); ``embeds`` the vision embeddings of one video, per row."""
    if len(rows) == 1:
        ids, types = rows[0]
        return fast.generate(ids, types, vision_embeds=embeds, max_new_tokens=new_tokens,
                             cuda_graph=cuda_graph)  # fmt: skip
    return fast.generate([r[0][0] for r in rows], [r[1][0] for r in rows],
                         vision_embeds=torch.cat([embeds] * len(rows)),
                         max_new_tokens=new_tokens, cuda_graph=cuda_graph)  # fmt: skip


def vision_tower(fast, frames: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """(the fast vision tower's block runner, its input [F, 1 + P, D]) for tracing."""
    with torch.inference_mode():
        return fast.run_vision_transformer, fast.embed_patches(frames)


def one_pass(model, kind: str, frames, ids, types, new_tokens: int, device, dtype):
    """Stage times (ms) of one video -> tokens pass of ``model`` ("reference" or "fast"), and
    the decode steps taken."""
    clock = _Clock(device)
    with torch.inference_mode():
        embeds = _vision_stages(model, kind, frames, dtype, clock)
        if kind == "fast":
            t: dict[str, Any] = {}
            model.generate(ids, types, vision_embeds=embeds, max_new_tokens=new_tokens,
                           eos_token_id=None, timings=t)  # fmt: skip
            clock.ms["prefill"] = t["prefill_s"] * 1e3
            clock.ms["decode tokens"] = t["decode_s"] * 1e3
            steps = int(t["decode_tokens"]) // ids.shape[0]
        else:
            _, steps = _greedy(model, ids, types, embeds, new_tokens, None, clock)
    return dict(clock.ms), steps
