"""Token reduction inside the vision tower in the app layer: `pipeline.answer` runs the vision
policies in the tower (the LM gets the rest), `testing.reduction_report` and `haic parity
--reduce`, and the bench suite's FLOP model."""

from __future__ import annotations

import argparse

import pytest
import torch

from haic_kernels.app.parity import reduce_option
from haic_kernels.app.pipeline import answer
from haic_kernels.bench.suites.vision_reduction import merge_for_half
from haic_kernels.models.cogvlm2 import ByteTokenizer, FastCogVLM2, build_prompt, stack_prompts
from haic_kernels.pruning import Compose, StaticPatches, Temporal, TextGuided, VisionMerge
from haic_kernels.pruning.vision import lm_policies, predict_trace, tower_flops
from haic_kernels.testing.reduction_report import format_reduction, reduction_report


@pytest.fixture
def setup(tiny_model, seed):
    ref = tiny_model("video-chat", text={"num_layers": 2})
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    s = ref.config.vision.image_size
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (3, s, s, 3), dtype=torch.uint8, generator=gen)
    frames[1] = frames[0]  # a repeated frame: StaticPatches(0) skips all its patches
    ids, types = stack_prompts([build_prompt(ByteTokenizer(), "what?", 3, ref.config)])
    return ref, fast, frames, ids, types


@torch.no_grad()
def test_answer_runs_vision_policies_in_the_tower(setup):
    ref, fast, frames, ids, types = setup
    policy = Compose((StaticPatches(0), VisionMerge(4), Temporal(0.5)))
    got = answer(fast, frames, ids, types, max_new_tokens=3, eos_token_id=None, prune=policy)
    want = fast.generate(ids, types, frames, max_new_tokens=3, prune=policy)
    assert torch.equal(got.tokens, want)
    assert fast.model.vision.reduction_trace[0][0] < 3 * ref.config.vision.num_positions
    # the reference model (no prune= of its own) runs a vision-only policy the same way
    r = answer(ref, frames, ids, types, max_new_tokens=3, eos_token_id=None, prune=VisionMerge(4))
    assert r.tokens.shape == (1, 3)
    assert lm_policies(policy) == Temporal(0.5) and lm_policies(VisionMerge(4)) is None


@torch.no_grad()
def test_reduction_report(setup):
    ref, fast, frames, ids, types = setup
    settings = {"merge": VisionMerge(4), "static": StaticPatches(0)}
    rows = reduction_report(fast, ids, types, frames, settings, max_new_tokens=2)
    none, merge, static = rows
    v = ref.config.vision
    assert none.setting == "none" and none.vit_flops_ratio == 1.0 and none.greedy_same
    assert none.tokens_in == 3 * v.num_positions == none.tokens_out
    assert merge.tokens_in == none.tokens_in and merge.tokens_out < merge.tokens_in
    assert 0 < merge.vit_flops_ratio < 1 and merge.adapter_rel_change > 0
    assert static.tokens_in == 2 * v.num_positions + 1  # frame 1 runs its CLS only
    # frame 1 repeats frame 0 exactly: its filled output is what the full tower computes
    assert static.adapter_rel_change == 0.0 and static.logits_rel_change == 0.0
    assert "static" in format_reduction(rows)
    (lm,) = reduction_report(fast, ids, types, frames, {"lm": Temporal(0.5)})[1:]
    assert lm.vit_flops_ratio == 1.0 and lm.tokens_out == none.tokens_out
    assert lm.adapter_rel_change == 0.0


def test_reduce_option():
    spec, policy = reduce_option("static:4+merge:8@2-5")
    assert spec == "static:4+merge:8@2-5"
    assert policy == Compose((StaticPatches(4), VisionMerge(8, (2, 3, 4, 5))))
    assert reduce_option("merge:3")[1] == VisionMerge(3)
    combined = Compose((VisionMerge(5), Temporal(0.5), TextGuided(0.25, layer=1)))
    assert reduce_option("merge:5+temporal:0.5+text:0.25@1")[1] == combined
    for bad, why in (("merge:0", "r: expected an int >= 1"), ("zoom:2", "unknown kind"),
                     ("static:300", "threshold"), ("merge:x", "invalid literal")):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError, match=why):
            reduce_option(bad)


def test_merge_for_half_halves_the_flop_model():
    r = merge_for_half(63, 257, 1792, 15360)
    full = tower_flops(1792, 15360, predict_trace(63, [257], None))
    half = tower_flops(1792, 15360, predict_trace(63, [257], VisionMerge(r)))
    less = tower_flops(1792, 15360, predict_trace(63, [257], VisionMerge(r - 1)))
    assert half <= full / 2 < less and r == 5  # r = 4 leaves 0.503x
    assert abs(tower_flops(1792, 15360, predict_trace(63, [257] * 24, None)) / 1e12 - 53.48) < 0.01
