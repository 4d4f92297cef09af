"""Every call the benchmarks and the launch counter make on the models, in one place.

Used: `CogVLM2ForCausalLM` (built here, `build_reference`), `FastCogVLM2.from_reference`, the
stage methods ``embed_patches`` / ``run_vision_tower`` / ``compress_and_adapt`` (both models),
``generate`` (fast), ``model.vision.transformer.layers`` and ``model.layers``. The timed
video -> tokens pass is `app.quick.one_pass` (it needs the pipeline, which sits above bench).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from haic_kernels.models.cogvlm2 import (
    ByteTokenizer,
    CogVLM2ForCausalLM,
    FastCogVLM2,
    build_prompt,
    get_config,
    stack_prompts,
)

__all__ = ["Models", "build", "build_reference", "encode", "generate", "prompts",
           "random_frames", "vision_tower"]  # fmt: skip


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


def build_reference(config, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The reference model (SDPA attention) built directly on ``device`` in ``dtype``, with its
    modules' own initialization (the full model in fp32 on the host would need ~50 GB and
    minutes of copying)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return CogVLM2ForCausalLM(config, attn_impl="sdpa")
    finally:
        torch.set_default_dtype(previous)


def build(size: str, variant: str, dtype: torch.dtype, frames: int, device: torch.device,
          backend: str = "auto", **fast_options: Any) -> Models:  # fmt: skip
    """Both models with random timing weights, built on ``device`` in ``dtype``
    (``fast_options``: `FastCogVLM2.from_reference`'s other keywords).

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
    fast = FastCogVLM2.from_reference(ref, backend=backend, **fast_options).eval()
    return Models(config, ref, fast)


def random_frames(config, frames: int, device: torch.device) -> torch.Tensor:
    """uint8 [frames, S, S, 3], as a video decoder hands them over."""
    s = config.vision.image_size
    return torch.randint(0, 256, (frames, s, s, 3), dtype=torch.uint8, device=device)


def prompts(config, frames: int, device: torch.device, queries: Sequence[str] = ("What?",)):
    """One (input_ids [1, S], token_type_ids [1, S]) per query (lengths differ with the query)."""
    tok = ByteTokenizer()
    return [tuple(t.to(device) for t in stack_prompts([build_prompt(tok, q, frames, config)]))
            for q in queries]  # fmt: skip


def encode(model, frames: torch.Tensor) -> torch.Tensor:
    """Frames -> vision embeddings [F, tokens per frame, D] through ``model``'s three stages."""
    with torch.inference_mode():
        return model.compress_and_adapt(model.run_vision_tower(model.embed_patches(frames)))


def generate(fast, rows, embeds: torch.Tensor, new_tokens: int, *, cuda_graph: bool = False,
             **options: Any):  # fmt: skip
    """Greedy tokens of the fast model for ``rows`` [(ids [1, S], types [1, S]), ...]: one row
    dense, several packed (ragged); ``embeds`` the vision embeddings of one video, per row;
    ``options``: generate's other keywords (``prune=``)."""
    if len(rows) == 1:
        ids, types = rows[0]
        return fast.generate(ids, types, vision_embeds=embeds, max_new_tokens=new_tokens,
                             cuda_graph=cuda_graph, **options)  # fmt: skip
    return fast.generate([r[0][0] for r in rows], [r[1][0] for r in rows],
                         vision_embeds=torch.cat([embeds] * len(rows)),
                         max_new_tokens=new_tokens, cuda_graph=cuda_graph,
                         **options)  # fmt: skip


def vision_tower(fast, frames: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """(the fast vision tower's block runner, its input [F, 1 + P, D]) for tracing."""
    with torch.inference_mode():
        return fast.run_vision_tower, fast.embed_patches(frames)
