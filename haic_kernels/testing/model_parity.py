"""Whole-model parity: the fast model against the reference, stage by stage (`haic parity`).

Three models are built from one state dict (seeded random weights or a checkpoint):

* ``fast``       - `FastCogVLM2.from_reference(reference)` (shares the reference's parameters);
* ``reference``  - `CogVLM2ForCausalLM` in the fast model's dtype (PyTorch's own error);
* ``oracle``     - a float64 copy of the reference (the high-precision answer).

All three run on the same uint8 frames and prompts, through the stage interface they share
(``model(ids, types, frames)``, ``model.generate(...)``, ``model.embed_patches(frames)``).
Forward hooks, registered by module name (the models have the same module tree), capture each
stage's output: patch embed, every vision block, the adapter (GLU), every LM layer, the final
norm; the logits come from the forward itself. Each stage follows DESIGN.md's rule
(`haic_kernels.testing.parity`): the fast error against the oracle must be at most 2x the
same-dtype reference's error plus an atol. Greedy tokens are compared over N prompts (the given
clip first, then seeded synthetic frames with other questions): the fast model's tokens must
equal the reference's or the oracle's.

The fast model keeps a batch's tokens packed ([T, D] where the reference has [B, S, D], the same
values in the same order), so a captured tensor is compared in the oracle's shape when it has
the same number of elements. A stage whose module the fast model never calls (a fused path that
bypasses it) is listed as "not observed" and does not fail the run; the later stages and the
logits still do.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from haic_kernels.models.cogvlm2 import (
    ByteTokenizer,
    CogVLM2ForCausalLM,
    FastCogVLM2,
    build_prompt,
    init_random_weights,
)
from haic_kernels.models.cogvlm2.weights import load_pretrained
from haic_kernels.testing.parity_report import ParityResult, PromptResult, StageResult
from haic_kernels.testing.rule import DEFAULT_ATOL, parity

__all__ = [
    "QUESTIONS",
    "ParityInput",
    "ParityModels",
    "build_models",
    "capture",
    "compare",
    "default_fast_factory",
    "make_inputs",
    "run_model",
    "run_parity",
    "stage_modules",
]

QUESTIONS = (
    "Describe this video.",
    "What moves, and where does it go?",
    "How many objects are there?",
    "What color is the background?",
)


def stage_modules(config) -> list[tuple[str, str]]:
    """(stage label, module name) in execution order, for ``config``'s depth."""
    out = [("patch embed", "model.vision.patch_embedding")]
    out += [
        (f"vision block {i}", f"model.vision.transformer.layers.{i}")
        for i in range(config.vision.num_layers)
    ]
    out.append(("adapter", "model.vision.linear_proj"))
    out += [(f"LM layer {i}", f"model.layers.{i}") for i in range(config.text.num_layers)]
    out.append(("final norm", "model.norm"))
    return out


# ---- inputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParityInput:
    frames: torch.Tensor  # uint8 [F, H, W, 3]
    question: str
    source: str


def max_clip_frames(config) -> int:
    """How many frames of a clip a parity prompt uses (one for the image variant)."""
    return 1 if config.vision_expert else min(config.max_frames, 6)


def make_inputs(
    config, num_prompts: int, *, clip: tuple[torch.Tensor, str] | None = None, seed: int = 0
) -> list[ParityInput]:
    """``num_prompts`` (frames, question) pairs: ``clip`` (uint8 frames [F, H, W, 3] of at most
    `max_clip_frames`, its name) first if given, then seeded random frames with 1..max_frames
    frames (one for the image variant) and other questions."""
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
    size = config.vision.image_size
    most = max_clip_frames(config)
    out: list[ParityInput] = []
    if clip is not None:
        out.append(ParityInput(clip[0].contiguous(), QUESTIONS[0], clip[1]))
    gen = torch.Generator().manual_seed(seed)
    while len(out) < num_prompts:
        i = len(out)
        n = 1 if most == 1 else 1 + (i * 2 + 1) % most
        frames = torch.randint(0, 256, (n, size, size, 3), generator=gen, dtype=torch.uint8)
        out.append(ParityInput(frames, QUESTIONS[i % len(QUESTIONS)], f"random frames {i}"))
    return out


# ---- models --------------------------------------------------------------------------------


def default_fast_factory(backend: str) -> Callable[[nn.Module], nn.Module]:
    def make(reference: nn.Module) -> nn.Module:
        return FastCogVLM2.from_reference(reference, backend=backend)

    return make


@dataclass
class ParityModels:
    reference: nn.Module
    fast: nn.Module
    oracle: nn.Module


def build_models(
    config,
    *,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    oracle_dtype: torch.dtype = torch.float64,
    oracle_device: torch.device | None = None,
    fast_factory: Callable[[nn.Module], nn.Module] | None = None,
) -> ParityModels:
    """The three models from one state dict: seeded random (``seed``) or ``checkpoint``."""
    if checkpoint is not None:
        master = load_pretrained(checkpoint, dtype=torch.float32, device="cpu", config=config)
    else:
        master = init_random_weights(CogVLM2ForCausalLM(config), seed=seed)
    oracle = copy.deepcopy(master).to(device=oracle_device or device, dtype=oracle_dtype).eval()
    reference = master.to(device=device, dtype=dtype).eval()
    fast = (fast_factory or default_fast_factory(backend))(reference)
    return ParityModels(reference=reference, fast=fast.eval(), oracle=oracle)


# ---- running -------------------------------------------------------------------------------


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return getattr(out, "logits", None) if not isinstance(out, (tuple, list)) else None


def capture(
    model: nn.Module, names: Sequence[str], call: Callable[[], Any]
) -> tuple[dict[str, torch.Tensor], Any]:
    """Run ``call()`` with forward hooks on ``model``'s modules ``names``; returns (the first
    output of each module that ran, kept on the CPU, and ``call()``'s result). A module called
    more than once keeps its first output."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            t = _first_tensor(out)
            if t is not None and name not in seen:
                seen[name] = t.detach().to("cpu", copy=True)

        return hook

    try:
        for name in names:
            if name in modules:
                handles.append(modules[name].register_forward_hook(hook_for(name)))
        result = call()
    finally:
        for h in handles:
            h.remove()
    return seen, result


def _rel(err: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    if not err.numel():
        return 0.0, 0.0
    max_rel = (err.max() / ref.abs().max().clamp_min(1e-30)).item()
    mean_rel = (err.mean() / ref.abs().mean().clamp_min(1e-30)).item()
    return max_rel, mean_rel


def _merge(stage: StageResult, fast, ref, oracle, atol: float | None) -> None:
    """Fold one prompt's tensors into ``stage`` (keeping the worst case)."""
    if fast.shape != oracle.shape and fast.numel() == oracle.numel():
        fast = fast.reshape(oracle.shape)  # packed rows [T, D] vs the reference's [B, S, D]
    if fast.shape != oracle.shape or ref.shape != oracle.shape:
        stage.ok = False
        stage.note = f"shape {tuple(fast.shape)} vs reference {tuple(oracle.shape)}"
        return
    rep = parity(fast, ref, oracle, atol=atol)
    o = oracle.double()
    if not rep.ok and rep.bound == 0.0:  # non-finite fast output
        stage.ok = False
        stage.note = "non-finite values in the fast output"
        stage.fast_max_rel = stage.fast_mean_rel = stage.ref_max_rel = stage.ratio = float("inf")
        return
    f_max, f_mean = _rel((fast.double() - o).abs(), o)
    r_max, _ = _rel((ref.double() - o).abs(), o)
    ratio = rep.fast_max_err / rep.bound
    if stage.shape is None or oracle.numel() > math.prod(stage.shape):
        stage.shape = tuple(oracle.shape)  # the largest of the prompts
    stage.fast_max_rel = max(stage.fast_max_rel or 0.0, f_max)
    stage.fast_mean_rel = max(stage.fast_mean_rel or 0.0, f_mean)
    stage.ref_max_rel = max(stage.ref_max_rel or 0.0, r_max)
    stage.ratio = max(stage.ratio or 0.0, ratio)
    stage.ok = stage.ok and rep.ok


def run_model(model: nn.Module, names, item: ParityInput, prompt, device, max_new_tokens: int, eos):
    """(the captured stage outputs, the greedy tokens) of one model on one input."""
    ids = prompt.input_ids.unsqueeze(0).to(device)
    types = prompt.token_type_ids.unsqueeze(0).to(device)
    frames = item.frames.to(device)  # uint8: every model normalizes it itself
    with torch.inference_mode():
        caught, out = capture(model, names, lambda: model(ids, types, frames))
        caught["logits"] = out.logits.detach().cpu()
        patch = "model.vision.patch_embedding"
        if patch not in caught:  # a fused patch embed bypasses the module: ask the stage
            caught[patch] = model.embed_patches(frames).detach().cpu()
        tokens = model.generate(ids, types, frames, max_new_tokens=max_new_tokens,
                                eos_token_id=eos)  # fmt: skip
    return caught, tokens[0].tolist()


def compare(
    models: ParityModels,
    config,
    inputs: Sequence[ParityInput],
    *,
    tokenizer=None,
    max_new_tokens: int = 4,
    atol: float | None = None,
) -> ParityResult:
    """Stage-by-stage errors and greedy tokens of ``models`` over ``inputs``."""
    tokenizer = tokenizer or ByteTokenizer()
    ref_p = next(models.reference.parameters())
    ora_p = next(models.oracle.parameters())
    stages = stage_modules(config)
    names = [m for _, m in stages]
    result = ParityResult(
        config=config.name,
        dtype=str(ref_p.dtype).removeprefix("torch."),
        device=str(ref_p.device),
        backend=str(getattr(models.fast, "backend", "auto")),
        oracle_dtype=str(ora_p.dtype).removeprefix("torch."),
        rope_precision=config.text.rope_precision,
        stages=[StageResult(label, mod, None) for label, mod in stages],
    )
    result.stages.append(StageResult("logits", "lm_head (output)", None))
    seen_fast: set[str] = set()
    for i, item in enumerate(inputs):
        prompt = build_prompt(tokenizer, item.question, item.frames.shape[0], config)
        runs = {
            key: run_model(model, names, item, prompt, p.device, max_new_tokens,
                           config.eos_token_ids)
            for key, model, p in (("oracle", models.oracle, ora_p),
                                  ("reference", models.reference, ref_p),
                                  ("fast", models.fast, ref_p))
        }  # fmt: skip
        for stage in result.stages:
            key = "logits" if stage.stage == "logits" else stage.module
            got = [runs[k][0].get(key) for k in ("fast", "reference", "oracle")]
            if got[0] is not None:
                seen_fast.add(key)
            if got[1] is None or got[2] is None:
                stage.note = "not called by the reference"
                continue
            if got[0] is None:
                continue
            _merge(stage, got[0], got[1], got[2], atol)
        result.prompts.append(
            PromptResult(
                index=i,
                source=item.source,
                question=item.question,
                frames=int(item.frames.shape[0]),
                tokens=len(prompt),
                fast_ids=runs["fast"][1],
                reference_ids=runs["reference"][1],
                oracle_ids=runs["oracle"][1],
            )
        )
    for stage in result.stages:
        key = "logits" if stage.stage == "logits" else stage.module
        if key not in seen_fast and not stage.note:
            stage.note = "not observed (the fast model does not call this module)"
    return result


def run_parity(
    config,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    num_prompts: int = 3,
    clip: tuple[torch.Tensor, str] | None = None,
    seed: int = 0,
    checkpoint: str | Path | None = None,
    backend: str = "auto",
    max_new_tokens: int = 4,
    oracle_dtype: torch.dtype = torch.float64,
    oracle_device: torch.device | str | None = None,
    tokenizer=None,
    fast_factory: Callable[[nn.Module], nn.Module] | None = None,
) -> ParityResult:
    """Build the three models and `compare` them on ``num_prompts`` inputs (``clip``: see
    `make_inputs`)."""
    device = torch.device(device)
    models = build_models(
        config,
        dtype=dtype,
        device=device,
        seed=seed,
        checkpoint=checkpoint,
        backend=backend,
        oracle_dtype=oracle_dtype,
        oracle_device=torch.device(oracle_device) if oracle_device is not None else None,
        fast_factory=fast_factory,
    )
    inputs = make_inputs(config, num_prompts, clip=clip, seed=seed)
    result = compare(
        models,
        config,
        inputs,
        tokenizer=tokenizer,
        max_new_tokens=max_new_tokens,
        atol=DEFAULT_ATOL.get(dtype),  # keyed by the compute dtype: the logits are fp32
    )
    result.backend = backend
    return result
