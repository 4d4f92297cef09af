"""vision_reduction: the vision tower's time vs the tokens it keeps (ToMe merging, static patches).

One input set per shape: the embedded patches of N frames and those frames (uint8; every other
frame repeats the previous one, so `StaticPatches(0)` drops half the patches of the later
frames). Cases per shape, all on the fast tower (`FastEVA2CLIPModel`, random weights):

* "dense": `run_vision_tower`, every frame's 1 + g*g tokens through every block (the baseline);
* "merge r=R": `VisionMerge(R)` in every block (packed varlen tower, unmerge at the end); R from
  `merge_for_half` halves the tower's FLOPs by the FLOP model (`tower_flops`), R/2 for a middle
  point;
* "static t=0": `StaticPatches(0)` (one host read of the kept counts, packed tower, fill);
* "overhead r=R": ONLY the token flow of "merge r=R" without the blocks: per block one
  `bipartite_match` + `merge_packed` on that block's shapes, then the unmerge gather: the cost
  the issue bounds at <= 5% of the tower's time at R.

``flops`` of a case: the blocks it runs (`tower_flops` of its predicted trace); the overhead
case carries the merge FLOPs it saves instead being 0 (so TFLOP/s is not read off it). Sizes:
tiny = the tiny config (4 blocks) with 4 frames in fp32 (CPU, seconds); full = the release's
tower (63 blocks, 257 tokens, D = 1792) on 24 frames in bf16. No GPU has run these yet.
"""

from __future__ import annotations

from typing import Any

import torch

from haic_kernels.bench.runner import Case
from haic_kernels.models.cogvlm2 import get_config
from haic_kernels.models.cogvlm2.fast.vision import FastEVA2CLIPModel
from haic_kernels.models.cogvlm2.fast.vision_reduce import run_reduced_tower
from haic_kernels.models.cogvlm2.reference import init_random_weights
from haic_kernels.models.cogvlm2.vision import EVA2CLIPModel
from haic_kernels.pruning.vision import (
    StaticPatches,
    VisionMerge,
    VisionReduction,
    merge_plans,
    merge_step,
    pack,
    predict_trace,
    restore,
    tower_flops,
)

SUITE = "vision_reduction"
# (name, config size, vision overrides, frames, dtype)
SHAPES: dict[str, list[tuple[str, str, dict, int, torch.dtype]]] = {
    "tiny": [("tiny-f4", "tiny", {"num_layers": 4}, 4, torch.float32)],
    "full": [("full-f24", "full", {}, 24, torch.bfloat16)],
}


def merge_for_half(num_layers: int, tokens: int, hidden: int, intermediate: int) -> int:
    """The smallest r whose `VisionMerge(r)` in every block at most halves the FLOPs of a
    tower of ``num_layers`` blocks over frames of ``tokens`` tokens (`tower_flops`)."""

    def flops(merge: VisionMerge | None) -> float:
        return tower_flops(hidden, intermediate, predict_trace(num_layers, [tokens], merge))

    base = flops(None)
    for r in range(1, tokens):
        if flops(VisionMerge(r)) <= base / 2:
            return r
    return tokens


def _tower(config, dtype: torch.dtype, device: torch.device) -> FastEVA2CLIPModel:
    with torch.device(device):
        ref = EVA2CLIPModel(config)
    init_random_weights(ref, seed=0)
    ref = ref.to(dtype).eval()
    return FastEVA2CLIPModel(ref, "auto", "auto")


def _flow_only(tower, x: torch.Tensor, merge: VisionMerge) -> torch.Tensor:
    """The token flow of ``merge`` without the blocks, as the tower runs it: the plans' one
    copy, per block `merge_step` (the features viewed as heads stand in for the keys), then
    the unmerge gather."""
    tok = pack(x)
    heads = tower.config.vision.num_heads
    layers = tower.transformer.layers
    plans = merge_plans(tok.lengths, merge, len(layers), x.device)
    for plan in plans:
        tok = merge_step(tok, tok.x, tok.x.view(tok.x.shape[0], heads, -1), merge.r, plan=plan)
    return restore(tok, x.shape[1])


def cases(size: str, device: torch.device) -> list[Case]:
    """Dense first (the baseline), then each reduction, then the overhead cases."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    device = torch.device(device)
    out: list[Case] = []
    for name, cfg_size, over, n, dtype in SHAPES[size]:
        config = get_config(cfg_size, "video-chat", vision=over) if over else get_config(cfg_size)
        v = config.vision
        state: dict[str, Any] = {}

        def make_inputs(dev: torch.device, config=config, n=n, dtype=dtype, state=state):
            if "tower" not in state:
                state["tower"] = _tower(config, dtype, dev)
            s = config.vision.image_size
            frames = torch.randint(0, 256, (n, s, s, 3), dtype=torch.uint8, device=dev)
            frames[1::2] = frames[0::2][: frames[1::2].shape[0]]
            with torch.no_grad():
                x = state["tower"].embed_patches(frames)
            return (x, frames)

        r_half = merge_for_half(v.num_layers, v.num_positions, v.hidden_size, v.intermediate_size)
        settings: list[tuple[str, VisionReduction | None]] = [("dense", None)]
        for r in sorted({max(r_half // 2, 1), r_half}):
            settings.append((f"merge r={r}", VisionReduction(merge=VisionMerge(r))))
        settings.append(("static t=0", VisionReduction(static=StaticPatches(0))))
        common = dict(suite=SUITE, name=name, dtype=str(dtype).removeprefix("torch."), bytes=0,
                      make_inputs=make_inputs, cuda_graph=False)  # fmt: skip
        full_len = [v.num_positions] * n
        for label, red in settings:
            if red is not None and red.static is not None:  # half the later frames repeat
                lens = [v.num_positions if f % 2 == 0 else 1 for f in range(n)]
            else:
                lens = full_len
            trace = predict_trace(v.num_layers, lens, red.merge if red else None)
            flops = int(tower_flops(v.hidden_size, v.intermediate_size, trace))
            shapes = {"frames": n, "tokens": v.num_positions, "blocks": v.num_layers,
                      "tokens_after": trace[-1][2] if trace else 0}  # fmt: skip

            def fn(x, frames, red=red, state=state):
                with torch.no_grad():
                    if red is None:
                        return state["tower"].run_vision_tower(x)
                    return run_reduced_tower(state["tower"], x, red, frames)[0]

            out.append(Case(backend=label, fn=fn, baseline=red is None, flops=flops,
                            shapes=shapes, **common))  # fmt: skip
        for label, red in settings:
            if red is None or red.merge is None:
                continue
            trace = predict_trace(v.num_layers, full_len, red.merge)

            def flow(x, frames, merge=red.merge, state=state):
                with torch.no_grad():
                    return _flow_only(state["tower"], x, merge)

            shapes = {"frames": n, "tokens_after": trace[-1][2]}
            out.append(Case(backend=label.replace("merge", "overhead"), fn=flow, flops=0,
                            shapes=shapes, **common))  # fmt: skip
    return out
