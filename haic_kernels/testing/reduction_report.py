"""What token reduction inside the vision tower does to one batch: the report of `haic parity
--reduce` and the e2e benchmark's reduction rows.

Per setting (a ``prune=`` option holding `StaticPatches` / `VisionMerge`, maybe LM-side policies
too) against no reduction, on the same model, frames and prompts: the vision tower's FLOPs
(`tower_flops` of the rows each block ran) and tokens (entering the tower, after its last
block), the relative change ``|a - a0| / |a0|`` of the adapter output (the LM's vision rows) and
of the last token's logits, and whether greedy tokens stay the same. With random weights these
numbers say how far the outputs move, NOT whether answers get worse (see the README).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from haic_kernels.constants import VISION_TOKEN_TYPE
from haic_kernels.pruning.vision import lm_policies, plan_vision, predict_trace, tower_flops

__all__ = ["ReductionRow", "format_reduction", "reduction_report"]


@dataclass
class ReductionRow:
    """One setting's row (``setting`` "none" is the reference point: changes 0)."""

    setting: str
    vit_tflops: float
    vit_flops_ratio: float
    tokens_in: int
    tokens_out: int
    adapter_rel_change: float
    logits_rel_change: float
    greedy_same: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(b.double().norm())
    return float((a.double() - b.double()).norm()) / den if den > 0 else 0.0


@torch.inference_mode()
def reduction_report(
    model: nn.Module,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor,
    frames: torch.Tensor,
    settings: Mapping[str, object],
    *,
    max_new_tokens: int = 4,
) -> list[ReductionRow]:
    """Rows for "none" and each of ``settings`` (name -> ``prune=`` option) on a `FastCogVLM2`
    ``model``: ``input_ids``/``token_type_ids`` [B, S] (equal rows), ``frames`` every row's
    uint8 frames in order. A setting's changes are against the same LM-side pruning without
    the vision-tower policies (what the tower's reduction adds); a setting with LM-side
    policies only therefore runs the whole tower and shows no change."""
    cfg = model.config
    v = cfg.vision
    per_video = (token_type_ids.eq(VISION_TOKEN_TYPE).sum(1) // cfg.tokens_per_frame).tolist()
    full = predict_trace(v.num_layers, [v.num_positions] * frames.shape[0], None)
    base_flops = tower_flops(v.hidden_size, v.intermediate_size, full)
    x0 = model.embed_patches(frames)
    rows0 = model.compress_and_adapt(model.run_vision_tower(x0))
    logits0 = model(input_ids, token_type_ids, frames).logits[:, -1]
    greedy0 = model.generate(input_ids, token_type_ids, frames, max_new_tokens=max_new_tokens)
    out = [ReductionRow("none", base_flops / 1e12, 1.0, full[0][0] if full else 0,
                        full[-1][2] if full else 0, 0.0, 0.0, True)]  # fmt: skip
    for name, prune in settings.items():
        reduction = plan_vision(prune, v.num_layers)
        if reduction is None:  # LM-side pruning only: the whole tower runs
            x, trace = model.run_vision_tower(x0), full
        else:
            x = model.run_reduced_tower(x0, reduction, frames, per_video)
            trace = model.model.vision.reduction_trace
        flops = tower_flops(v.hidden_size, v.intermediate_size, trace)
        rows = model.compress_and_adapt(x)
        lm = lm_policies(prune)
        logits = model(input_ids, token_type_ids, frames, prune=prune).logits[:, -1]
        greedy = model.generate(input_ids, token_type_ids, frames, prune=prune,
                                max_new_tokens=max_new_tokens)  # fmt: skip
        if lm is not None:  # LM-side pruning changes the token count: compare its own base
            logits0_lm = model(input_ids, token_type_ids, frames, prune=lm).logits[:, -1]
            greedy0_lm = model.generate(input_ids, token_type_ids, frames, prune=lm,
                                        max_new_tokens=max_new_tokens)  # fmt: skip
        else:
            logits0_lm, greedy0_lm = logits0, greedy0
        out.append(ReductionRow(
            name, flops / 1e12, flops / base_flops if base_flops else 1.0, trace[0][0],
            trace[-1][2], _rel(rows, rows0), _rel(logits, logits0_lm),
            bool(torch.equal(greedy, greedy0_lm)),
        ))  # fmt: skip
    return out


def format_reduction(rows: list[ReductionRow]) -> str:
    """The printed table."""
    lines = [f"{'setting':<34} {'ViT TFLOP':>10} {'x none':>7} {'tokens in':>10} "
             f"{'out':>6} {'adapter d':>10} {'logits d':>10}  greedy"]  # fmt: skip
    for r in rows:
        same = "same" if r.greedy_same else "DIFFERS"
        lines.append(f"{r.setting:<34} {r.vit_tflops:10.4f} {r.vit_flops_ratio:7.3f} "
                     f"{r.tokens_in:10d} {r.tokens_out:6d} {r.adapter_rel_change:10.2e} "
                     f"{r.logits_rel_change:10.2e}  {same}")  # fmt: skip
    return "\n".join(lines)
