"""The reference model's keep mask: pruning plumbing is exact.

A keep mask applied before the LM equals running the model on a hand-built sequence of only
the kept tokens with their original position ids (same logits to fp32 rounding, same greedy
tokens) - the check the fast model will be held to. keep_from_layer (FastV-style) equals a
layer-by-layer loop over the same modules, and its mixed-length KV cache decodes like a
recompute. Policies run end to end on the tiny model with scores from the reference.
"""

from __future__ import annotations

import pytest
import torch

from haic_kernels.models.cogvlm2 import (
    ByteTokenizer,
    CogVLM2ForCausalLM,
    build_position_ids,
    build_prompt,
    get_config,
    init_random_weights,
    stack_prompts,
)
from haic_kernels.models.cogvlm2.language import apply_rotary, routed
from haic_kernels.ops.attention.api import attention
from haic_kernels.pruning import (
    TokenLayout,
    compose,
    pool_cls_attention,
    query_rows,
    salient,
    temporal,
    text_guided,
)
from haic_kernels.testing.prune_scores import (
    lm_key_scores_reference,
    vision_cls_scores_reference,
)
from haic_kernels.tokens import vision_expert_mask

LOGIT_ATOL = 1e-5  # fp32, same ops on the same rows: only summation-order noise is allowed


def make_model(variant: str, seed: int = 0) -> CogVLM2ForCausalLM:
    model = CogVLM2ForCausalLM(get_config("tiny", variant))
    init_random_weights(model, seed)
    return model.eval()


def make_batch(cfg, frames: int = 3, queries=("what is here?", "what is that?")):
    tok = ByteTokenizer()
    ids, types = stack_prompts([build_prompt(tok, q, frames, cfg) for q in queries])
    images = torch.randn(len(queries) * frames, 3, cfg.vision.image_size, cfg.vision.image_size)
    return ids, types, images


@torch.no_grad()
def greedy(model, steps: int, **prefill) -> torch.Tensor:
    """Greedy tokens with the KV cache (any forward kwargs for the prefill, e.g. keep)."""
    out = model(**prefill, use_cache=True)
    toks = []
    b = prefill["input_ids"].shape[0]
    new_type = torch.zeros(b, 1, dtype=torch.long)
    for _ in range(steps):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        toks.append(nxt)
        out = model(nxt, new_type, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(toks, 1)


@pytest.mark.parametrize("variant", ["video-chat", "image"])
@torch.no_grad()
def test_keep_before_lm_equals_kept_only_sequence(seed, variant) -> None:
    model = make_model(variant, seed % 1000)
    cfg = model.config
    ids, types, images = make_batch(cfg)
    embeds = model.encode_frames(images)
    res = temporal(
        embeds, types, tokens_per_frame=cfg.tokens_per_frame, keep_ratio=0.3, per="frame"
    )
    keep = res.keep
    assert 0 < int(keep.sum()) < keep.numel()
    pruned = model(ids, types, vision_embeds=embeds, keep=keep)
    # Hand-built: only the kept tokens, their ORIGINAL position ids, their vision rows.
    pos = build_position_ids(types)
    b, n = ids.shape[0], int(keep[0].sum())
    vis = types == 1
    manual = model(
        ids[keep].view(b, n),
        types[keep].view(b, n),
        vision_embeds=embeds.reshape(-1, embeds.shape[-1])[keep[vis]],
        position_ids=pos[keep].view(b, n),
    )
    assert pruned.logits.shape == (b, n, cfg.text.vocab_size)
    torch.testing.assert_close(pruned.logits, manual.logits, rtol=0, atol=LOGIT_ATOL)
    # model_inputs builds the same hand-made call.
    inputs = res.model_inputs(ids, types, vision_embeds=embeds)
    again = model(**inputs)
    torch.testing.assert_close(again.logits, manual.logits, rtol=0, atol=LOGIT_ATOL)
    # Greedy decoding from both prefills gives the same tokens.
    a = greedy(model, 4, input_ids=ids, token_type_ids=types, vision_embeds=embeds, keep=keep)
    m = greedy(model, 4, **inputs)
    assert torch.equal(a, m)
    # Pruning changes the answer's logits (the test is not vacuous).
    full = model(ids, types, vision_embeds=embeds)
    assert not torch.allclose(full.logits[:, -1], pruned.logits[:, -1], atol=1e-3)


@torch.no_grad()
def test_keep_none_and_keep_all_are_the_unpruned_model(seed) -> None:
    model = make_model("image", seed % 1000)
    ids, types, images = make_batch(model.config, frames=2)
    base = model(ids, types, images)
    same = model(ids, types, images, keep=None)
    assert torch.equal(base.logits, same.logits)
    all_kept = model(ids, types, images, keep=torch.ones_like(ids, dtype=torch.bool))
    torch.testing.assert_close(all_kept.logits, base.logits, rtol=0, atol=LOGIT_ATOL)


@pytest.mark.parametrize("variant", ["video-chat", "image"])
@torch.no_grad()
def test_keep_from_layer_matches_layer_loop_and_cache(seed, variant) -> None:
    model = make_model(variant, seed % 1000)
    cfg = model.config
    ids, types, images = make_batch(cfg)
    embeds = model.encode_frames(images)
    lay = TokenLayout.from_token_types(types, cfg.tokens_per_frame)
    scores = torch.rand(ids.shape)
    res = text_guided(scores, layout=lay, keep_ratio=0.25, layer=0, num_layers=2)
    assert res.keep_from_layer == 1
    out = model(ids, types, vision_embeds=embeds, keep=res.keep, keep_from_layer=1, use_cache=True)
    # Straightforward loop: layer 0 on every token, then drop, reroute, layer 1, norm, head.
    m = model.model
    vis = types == 1
    x = m.embed_tokens(ids)
    x[vis] = embeds.reshape(-1, embeds.shape[-1])
    pos = build_position_ids(types)
    vmask = vision_expert_mask(types) if cfg.vision_expert else None
    x, _ = m.layers[0](x, vmask, pos)
    b, n = ids.shape[0], int(res.keep[0].sum())
    x = x[res.keep].view(b, n, -1)
    kept_types = types[res.keep].view(b, n)
    vmask = vision_expert_mask(kept_types) if cfg.vision_expert else None
    x, _ = m.layers[1](x, vmask, pos[res.keep].view(b, n))
    want = model.lm_head(m.norm(x)).float()
    torch.testing.assert_close(out.logits, want, rtol=0, atol=LOGIT_ATOL)
    # KV cache: full length before layer K, kept length from K on; decoding with it equals a
    # recompute of the longer sequence with the same keep (new token kept).
    cache = out.past_key_values
    assert cache.keys[0].shape[2] == ids.shape[1] and cache.keys[1].shape[2] == n
    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
    step = model(nxt, torch.zeros_like(nxt), past_key_values=cache)
    ids2, types2 = torch.cat([ids, nxt], 1), torch.cat([types, torch.zeros_like(nxt)], 1)
    keep2 = torch.cat([res.keep, torch.ones_like(nxt, dtype=torch.bool)], 1)
    re = model(ids2, types2, vision_embeds=embeds, keep=keep2, keep_from_layer=1)
    torch.testing.assert_close(step.logits[:, -1], re.logits[:, -1], rtol=0, atol=1e-4)


@torch.no_grad()
def test_text_guided_end_to_end_and_compose(seed) -> None:
    model = make_model("video-chat", seed % 1000)
    cfg = model.config
    ids, types, images = make_batch(cfg)
    embeds = model.encode_frames(images)
    # Stage 1: temporal before the LM.
    t = temporal(embeds, types, tokens_per_frame=cfg.tokens_per_frame, keep_ratio=0.5, per="frame")
    inputs = t.model_inputs(ids, types, vision_embeds=embeds)
    lay = t.layout_after
    assert torch.equal(lay.token_type_ids, inputs["token_type_ids"])
    # Stage 2: text-guided at layer 0 of the compacted sequence, scored by the last token.
    rows = query_rows(lay, "last")
    scores = lm_key_scores_reference(model, **inputs, layer=0, query_rows=rows)
    assert torch.allclose(scores.sum(1), torch.ones(2), atol=1e-5)  # a softmax row's mean
    g = text_guided(scores, layout=lay, keep_ratio=0.5, layer=0, num_layers=2)
    plan = compose(t, g)
    final = plan.final_keep()
    assert final.shape == ids.shape
    # Every text/boi/eoi token survives both stages.
    orig = TokenLayout.from_token_types(types, cfg.tokens_per_frame)
    assert final[~orig.patch].all()
    out = model(**inputs, keep=g.keep, keep_from_layer=g.keep_from_layer)
    assert out.logits.shape[1] == int(g.keep[0].sum()) and torch.isfinite(out.logits).all()
    # Query "text" differs from "last" and is a mean over several rows.
    rows_t = query_rows(lay, "text")
    assert int(rows_t[0].sum()) > 1 and rows_t[0, -1]


@torch.no_grad()
def test_salient_with_vision_tower_scores_and_merge(seed) -> None:
    model = make_model("video-chat", seed % 1000)
    cfg = model.config
    ids, types, images = make_batch(cfg, frames=2)
    cls = vision_cls_scores_reference(model.model.vision, images)  # [F, 1 + 8*8]
    assert cls.shape == (4, cfg.vision.num_positions)
    assert torch.allclose(cls.sum(1), torch.ones(4), atol=1e-5)
    pooled = pool_cls_attention(cls)
    assert pooled.shape == (4, cfg.tokens_per_frame - 2)
    embeds = model.encode_frames(images)
    res = salient(
        pooled,
        types,
        tokens_per_frame=cfg.tokens_per_frame,
        keep_ratio=0.25,
        merge=True,
        vision_embeds=embeds,
    )
    assert res.sizes is not None and res.vision_embeds is not None
    # Sizes: every original patch token is accounted for exactly once.
    lay = res.layout
    assert torch.allclose(res.sizes[lay.patch].sum(), torch.tensor(float(lay.patch.sum())))
    inputs = res.model_inputs(ids, types)
    out = model(**inputs)
    manual = model(ids, types, vision_embeds=res.vision_embeds, keep=res.keep)
    torch.testing.assert_close(out.logits, manual.logits, rtol=0, atol=LOGIT_ATOL)


def test_keep_argument_errors() -> None:
    model = make_model("video-chat")
    ids, types, images = make_batch(model.config, frames=1)
    embeds = model.encode_frames(images)
    keep = torch.ones_like(ids, dtype=torch.bool)
    with pytest.raises(ValueError, match="keep_from_layer"):
        model(ids, types, vision_embeds=embeds, keep=keep, keep_from_layer=2)
    with pytest.raises(ValueError, match="keep_from_layer"):
        model(ids, types, vision_embeds=embeds, keep=keep, keep_from_layer=-1)
    with pytest.raises(ValueError, match="keep must be a bool"):
        model(ids, types, vision_embeds=embeds, keep=keep.long())
    with pytest.raises(ValueError, match="shape"):
        model(ids, types, vision_embeds=embeds, keep=keep[:, 1:])
    uneven = keep.clone()
    uneven[0, 3] = False
    with pytest.raises(ValueError, match="same number"):
        model(ids, types, vision_embeds=embeds, keep=uneven)


@torch.no_grad()
def test_reference_scores_equal_attention_key_scores(seed) -> None:
    """The scores the fast model will read from attention(key_scores=...) are the ones the
    reference helpers compute (LM layer, causal, GQA; vision tower CLS row, full attention)."""
    model = make_model("image", seed % 1000)
    cfg = model.config
    ids, types, images = make_batch(cfg, frames=2)
    embeds = model.encode_frames(images)
    lay = TokenLayout.from_token_types(types, cfg.tokens_per_frame)
    rows = query_rows(lay, "text")
    want = lm_key_scores_reference(
        model, ids, types, layer=1, query_rows=rows, vision_embeds=embeds
    )
    attn = model.model.layers[1].self_attn
    seen = {}

    def grab_args(module, args, kwargs) -> None:
        seen.setdefault("a", args)

    def grab_x(module, args) -> None:
        seen.setdefault("x", args[0])

    h = attn.register_forward_pre_hook(grab_args, with_kwargs=True)
    model(ids, types, vision_embeds=embeds)
    h.remove()
    x, vmask, pos = seen["a"][:3]
    b, s, _ = x.shape
    qkv = routed(x, vmask, attn.language_expert_query_key_value, attn.vision_expert_query_key_value)
    q, k, v = qkv.split(attn.split, dim=-1)
    q = q.view(b, s, attn.num_heads, attn.head_dim).transpose(1, 2)
    k = k.view(b, s, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
    cos, sin = attn.rotary_emb(pos, q.dtype)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    v = v.view(b, s, attn.num_kv_heads, attn.head_dim)
    out = attention(
        q.transpose(1, 2).contiguous(),
        k.transpose(1, 2).contiguous(),
        v.contiguous(),
        causal=True,
        key_scores=rows,
        backend="torch",
    )
    got = out[-1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # Vision tower: the CLS row of each frame, full attention.
    cls = vision_cls_scores_reference(model.model.vision, images)
    va = model.model.vision.transformer.layers[-1].attention
    seen.clear()
    h = va.register_forward_pre_hook(grab_x)
    model.model.vision(images)
    h.remove()
    xv = seen["x"]
    n, length, _ = xv.shape
    qkv = va.query_key_value(xv).view(n, length, 3, va.num_heads, va.head_dim)
    qv, kv_, vv = qkv.unbind(2)
    row0 = torch.zeros(n, length, dtype=torch.bool)
    row0[:, 0] = True
    got_v = attention(
        qv.contiguous(),
        kv_.contiguous(),
        vv.contiguous(),
        causal=False,
        key_scores=row0,
        backend="torch",
    )[-1]
    torch.testing.assert_close(got_v, cls, atol=1e-5, rtol=1e-4)
