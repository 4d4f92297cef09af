"""Token reduction inside the vision tower (issue 15): StaticPatches and VisionMerge.

* the fast model's packed tower (varlen over frames, merges, unmerge/fill) equals the reference
  model's frame-by-frame implementation: the same kept patches and merges exactly (token counts
  per block, kept masks), the outputs to fp32 tolerance;
* no reduction is bit for bit today's tower; odd shapes: frames whose token counts differ, r
  larger than a frame allows (clamped), a frame where nothing repeats, one where everything does;
* the policies' own checks and their place in the pruning protocol.
"""

from __future__ import annotations

import pytest
import torch

from haic_kernels.models.cogvlm2 import FastCogVLM2, pad_prompts
from haic_kernels.models.cogvlm2.fast.vision_reduce import run_reduced_tower
from haic_kernels.models.cogvlm2.vision_reduce import reduced_tower_reference
from haic_kernels.ops.activation import bias_gelu
from haic_kernels.ops.attention import attention
from haic_kernels.ops.norm import add_layer_norm
from haic_kernels.pruning import (
    Compose,
    Salient,
    StaticPatches,
    Temporal,
    TextGuided,
    TokenCounts,
    VisionMerge,
    plan_stages,
    plan_vision,
)
from haic_kernels.pruning.vision import (
    merge_counts,
    merge_plans,
    merge_step,
    pack,
    static_keep,
    tower_flops,
)
from tests._triton import needs_triton_cpu

# fp32 on CPU: the fast ops (packed varlen attention, fused QKV views) against stock torch per
# frame; observed ~1e-6, so 1e-5 still catches a wrong merge or fill (those move 1e-2 and more).
FP32_REL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _frames(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)


@pytest.fixture
def models(tiny_model):
    ref = tiny_model("video-chat", text={"num_layers": 2}, vision={"num_layers": 3})
    return ref, FastCogVLM2.from_reference(ref, backend="torch")


def _odd_clip(size: int, patch: int, seed: int) -> torch.Tensor:
    """Two videos (3 + 2 frames): frame 1 repeats frame 0's top half; frame 2 changes one pixel
    of one patch and repeats the rest; video 2's second frame repeats its first entirely."""
    f = _frames(5, size, seed)
    f[1, : size // 2] = f[0, : size // 2]
    f[2] = f[1]
    f[2, 3, 3, 0] = (int(f[1, 3, 3, 0]) + 40) % 256
    f[4] = f[3]
    return f


POLICIES = {
    "merge": VisionMerge(r=5),
    "merge_layers": VisionMerge(r=9, layers=(1,)),
    "merge_too_many": VisionMerge(r=1000),  # clamped to (n - 1) // 2 in every frame
    "static": StaticPatches(threshold=0),
    "static_merge": Compose((StaticPatches(threshold=10), VisionMerge(r=4, layers=(0, 2)))),
}


@pytest.mark.parametrize("name", list(POLICIES))
@torch.no_grad()
def test_fast_tower_equals_reference(models, seed, name):
    ref, fast = models
    v = ref.config.vision
    frames = _odd_clip(v.image_size, v.patch_size, seed)
    reduction = plan_vision(POLICIES[name], v.num_layers)
    x = ref.embed_patches(frames)
    want, final = reduced_tower_reference(ref.model.vision, x, reduction, frames, [3, 2])
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    got, _, tok = run_reduced_tower(fast.model.vision, x, reduction, frames, cu)
    assert tok.lengths == final  # the same tokens kept and merged in every frame
    assert _rel(got, want) < FP32_REL
    if reduction.static is not None:
        keep = static_keep(frames, reduction.static.threshold, v.patch_size, cu)
        # frame 2: only the changed patch runs; frame 4 (all repeated) only CLS
        assert int(keep[2].sum()) == 2 and int(keep[4].sum()) == 1
        assert bool(keep[[0, 3]].all())
        # everything repeats in frame 4: its output is frame 3's, bit for bit (CLS aside)
        assert torch.equal(got[4, 1:], got[3, 1:])


@torch.no_grad()
def test_merge_clamps_r_per_frame_and_counts_flops(models, seed):
    ref, fast = models
    v = ref.config.vision
    frames = _frames(2, v.image_size, seed)
    n0 = v.num_positions  # 65 at tiny size
    reduction = plan_vision(VisionMerge(r=1000), v.num_layers)
    x = fast.model.vision.embed_patches(frames)
    _, _, tok = run_reduced_tower(fast.model.vision, x, reduction, frames)
    n = n0
    for attn_rows, sq, mlp_rows in tok.trace:  # clamped: (n - 1) // 2 merges per block
        assert attn_rows == 2 * n and sq == 2 * n * n
        n -= (n - 1) // 2
        assert mlp_rows == 2 * n
    assert merge_counts([65, 2, 1], 1000) == [32, 0, 0]
    full = tower_flops(v.hidden_size, v.intermediate_size, [(2 * n0, 2 * n0 * n0, 2 * n0)] * 3)
    assert tower_flops(v.hidden_size, v.intermediate_size, tok.trace) < full


@torch.no_grad()
def test_nothing_repeats_keeps_every_token(models, seed):
    ref, fast = models
    v = ref.config.vision
    frames = _frames(3, v.image_size, seed)  # independent random frames: nothing repeats
    reduction = plan_vision(StaticPatches(threshold=0), v.num_layers)
    x = fast.model.vision.embed_patches(frames)
    got, _, tok = run_reduced_tower(fast.model.vision, x, reduction, frames)
    assert tok.lengths == [v.num_positions] * 3
    assert _rel(got, fast.model.vision.run_vision_tower(x)) < FP32_REL


@torch.no_grad()
def test_everything_repeats_runs_cls_only(models, seed):
    ref, fast = models
    v = ref.config.vision
    frames = _frames(1, v.image_size, seed).expand(4, -1, -1, -1).contiguous()
    reduction = plan_vision(StaticPatches(threshold=255), v.num_layers)
    x = fast.model.vision.embed_patches(frames)
    got, _, tok = run_reduced_tower(fast.model.vision, x, reduction, frames)
    assert tok.lengths == [v.num_positions, 1, 1, 1]
    for f in range(1, 4):
        assert torch.equal(got[f, 1:], got[0, 1:])
    want, _ = reduced_tower_reference(ref.model.vision, x, reduction, frames, [4])
    assert _rel(got, want) < FP32_REL


def _batch(fast, tiny_prompts, seed):
    prompts, frames = tiny_prompts(fast.config, [("what is here?", 3), ("why", 2)])
    v = fast.config.vision
    clip = _odd_clip(v.image_size, v.patch_size, seed)
    frames = [clip[:3], clip[3:]]
    return prompts, frames


@pytest.mark.parametrize("name", ["merge", "static_merge"])
@torch.no_grad()
def test_whole_model_equals_reference(models, tiny_prompts, seed, name):
    ref, fast = models
    prompts, frames = _batch(fast, tiny_prompts, seed)
    ids, types, lens = pad_prompts(prompts)
    out = fast(ids, types, torch.cat(frames), lengths=lens, prune=POLICIES[name])
    base = fast(ids, types, torch.cat(frames), lengths=lens)
    for b, (p, f) in enumerate(zip(prompts, frames)):
        want = ref(p.input_ids[None], p.token_type_ids[None], f, vision_reduction=POLICIES[name])
        got = out.logits[b, : lens[b]]
        assert _rel(got, want.logits[0]) < FP32_REL
        # the reduction changes the answer's inputs (random weights: by how much says nothing)
        assert not torch.equal(got, base.logits[b, : lens[b]])


@torch.no_grad()
def test_no_reduction_is_bit_identical(models, tiny_prompts, seed):
    """prune=None and the LM-side policies run the dense tower exactly as before: the same
    blocks' math (today's `FastVisionLayer` formula with its fused ops, restated here) bit for
    bit."""
    ref, fast = models
    vis = fast.model.vision
    frames = _frames(3, ref.config.vision.image_size, seed)
    x = vis.embed_patches(frames)
    want = x
    for layer in vis.transformer.layers:
        a = layer.attention
        n, length, _ = want.shape
        q, k, v = a.query_key_value(want).view(n, length, 3, a.num_heads, a.head_dim).unbind(2)
        ctx = attention(q, k, v, causal=False, backend=layer.backend)
        ln1, ln2, fc1 = layer.input_layernorm, layer.post_attention_layernorm, layer.mlp.fc1
        be = layer.op_backend
        h = add_layer_norm(a.dense(ctx.reshape(n, length, -1)), want, ln1.weight, ln1.bias,
                           eps=ln1.eps, backend=be)  # fmt: skip
        mlp = layer.mlp.fc2(bias_gelu(torch.nn.functional.linear(h, fc1.weight), fc1.bias,
                                      backend=be))  # fmt: skip
        want = add_layer_norm(mlp, h, ln2.weight, ln2.bias, eps=ln2.eps, backend=be)
    assert torch.equal(vis.run_vision_tower(x), want)
    assert plan_vision(None, 3) is None and plan_vision(Temporal(0.5), 3) is None
    prompts, fr = _batch(fast, tiny_prompts, seed)
    ids, types, lens = pad_prompts(prompts)
    a = fast(ids, types, torch.cat(fr), lengths=lens, prune=Temporal(0.5))
    b = fast(ids, types, torch.cat(fr), lengths=lens, prune=Compose((Temporal(0.5),)))
    # padded rows hold NaN logits: equal bit for bit, NaN where NaN
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0, equal_nan=True)


def test_policy_checks():
    with pytest.raises(ValueError, match="r: expected an int >= 1"):
        VisionMerge(r=0)
    with pytest.raises(ValueError, match="threshold: expected an int in"):
        StaticPatches(threshold=256)
    with pytest.raises(ValueError, match="layers: repeated block"):
        VisionMerge(r=2, layers=(1, 1))
    with pytest.raises(ValueError, match=r"VisionMerge.layers: blocks must lie in \[0, 3\)"):
        plan_vision(VisionMerge(r=2, layers=(0, 3)), 3)
    with pytest.raises(ValueError, match="at most one StaticPatches and one VisionMerge"):
        plan_vision(Compose((VisionMerge(r=2), VisionMerge(r=3))), 3)
    both = Compose((StaticPatches(4), VisionMerge(r=2), Temporal(0.5), TextGuided(0.5, layer=0)))
    before, in_lm = plan_stages(both, 2)
    assert before == [Temporal(0.5)] and in_lm == TextGuided(0.5, layer=0)
    assert plan_stages(VisionMerge(r=2), 2) == ([], None)
    counts = TokenCounts.unpruned([20], [18], 9)
    assert VisionMerge(r=2).kept(counts) == counts == StaticPatches(0).kept(counts)


@torch.no_grad()
def test_needs_frames_and_uint8(models, tiny_prompts, seed):
    ref, fast = models
    v = ref.config.vision
    frames = _frames(2, v.image_size, seed)
    with pytest.raises(ValueError, match="StaticPatches: needs uint8 frames"):
        static_keep(frames.float(), 0, v.patch_size)
    prompts, fr = _batch(fast, tiny_prompts, seed)
    ids, types, lens = pad_prompts(prompts)
    embeds = fast.encode_frames(torch.cat(fr))
    with pytest.raises(ValueError, match="run inside the vision tower: pass frames"):
        fast(ids, types, vision_embeds=embeds, lengths=lens, prune=VisionMerge(r=2))


@torch.no_grad()
def test_cls_scores_through_the_packed_tower(models, tiny_prompts, seed):
    """Salient after a reduced tower: the CLS attention per position. Nothing reduced: the dense
    tower's scores; merged: each frame's mass still sums to 1 (a merged token's share spread
    evenly over its positions); the whole model runs with the composition."""
    ref, fast = models
    v = ref.config.vision
    vis = fast.model.vision
    frames = _frames(3, v.image_size, seed)
    x = vis.embed_patches(frames)
    _, dense = vis.run_vision_tower(x, cls_scores=True)
    nothing = plan_vision(StaticPatches(threshold=0), v.num_layers)  # random frames: none repeat
    _, got, _ = run_reduced_tower(vis, x, nothing, frames, cls_scores=True)
    assert _rel(got, dense) < FP32_REL
    merged = plan_vision(VisionMerge(r=9), v.num_layers)
    _, got, tok = run_reduced_tower(vis, x, merged, frames, cls_scores=True)
    assert tok.lengths != [v.num_positions] * 3
    torch.testing.assert_close(got.sum(1), torch.ones(3), rtol=1e-5, atol=1e-5)
    prompts, fr = _batch(fast, tiny_prompts, seed)
    ids, types, lens = pad_prompts(prompts)
    out = fast(ids, types, torch.cat(fr), lengths=lens,
               prune=Compose((VisionMerge(r=4), Salient(0.5))))  # fmt: skip
    assert out.logits.shape[0] == 2 and out.prune is not None


@pytest.mark.slow
@needs_triton_cpu
@torch.no_grad()
def test_triton_tower_equals_torch_tower(tiny_model, seed):
    """The packed tower on the Triton backends (attention with key_bias, matcher, merge; under
    the interpreter) against the torch backends: the same merges, outputs to fp32 rounding."""
    ref = tiny_model("video-chat", text={"num_layers": 1}, vision={"num_layers": 2})
    v = ref.config.vision
    frames = _odd_clip(v.image_size, v.patch_size, seed)[3:]
    reduction = plan_vision(Compose((StaticPatches(10), VisionMerge(r=6))), v.num_layers)
    cu = torch.tensor([0, 2], dtype=torch.int32)
    outs = []
    for backend in ("torch", "triton"):
        vis = FastCogVLM2.from_reference(ref, backend=backend).model.vision
        x = vis.embed_patches(frames)
        got, _, tok = run_reduced_tower(vis, x, reduction, frames, cu)
        outs.append((got, tok.lengths, tok.trace))
    (a, la, ta), (b, lb, tb) = outs
    assert la == lb and ta == tb
    assert _rel(b, a) < FP32_REL


def test_merge_plans_hold_every_blocks_counts():
    """The tower's r and cu_seqlens per merging block, computed up front (one copy): r clamped
    frame by frame as `merge_counts`, the lengths carried from block to block."""
    cpu = torch.device("cpu")
    plans = merge_plans([65, 2, 1], VisionMerge(r=1000, layers=(0, 2)), 3, cpu)
    assert plans[1] is None
    assert plans[0].dtype == torch.int32 and plans[0].tolist() == [32, 0, 0, 0, 33, 35, 36]
    assert plans[2].tolist() == [16, 0, 0, 0, 17, 19, 20]  # 33 -> 17; 2 and 1 never merge
    assert merge_plans([2, 1], VisionMerge(r=3), 2, cpu) == [None, None]
    tok = pack(torch.randn(3, 65, 8))
    with pytest.raises(ValueError, match=r"plan: expected int32 \[7\]"):
        merge_step(tok, tok.x, tok.x.view(195, 2, 4), 4, plan=plans[0][:5])
