"""The reference model: names, shapes, an independent functional re-implementation, attention
implementations, causality, expert routing, dtype handling and input validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from haic_kernels.constants import CLIP_MEAN, CLIP_STD, VISION_TOKEN_TYPE
from haic_kernels.models.cogvlm2 import (
    VARIANTS,
    ByteTokenizer,
    CogVLM2ForCausalLM,
    build_position_ids,
    build_prompt,
    get_config,
    greedy_generate,
    init_random_weights,
    normalize_frames,
    stack_prompts,
)
from haic_kernels.models.cogvlm2.language import RMSNorm


def make_model(variant: str = "video-chat", seed: int = 0, **overrides) -> CogVLM2ForCausalLM:
    model = CogVLM2ForCausalLM(get_config("tiny", variant, **overrides))
    init_random_weights(model, seed)
    return model.eval()


def make_batch(cfg, frames: int = 2, queries=("what is here?", "what is that?")):
    tok = ByteTokenizer()
    ids, types = stack_prompts([build_prompt(tok, q, frames, cfg) for q in queries])
    images = torch.randn(len(queries) * frames, 3, cfg.vision.image_size, cfg.vision.image_size)
    return ids, types, images


# --------------------------------------------------------------------------------- structure


def test_state_dict_names_are_the_release_names() -> None:
    image = make_model("image").state_dict()
    video = make_model("video-chat").state_dict()
    expected = [
        "model.vision.patch_embedding.proj.weight",
        "model.vision.patch_embedding.proj.bias",
        "model.vision.patch_embedding.cls_embedding",
        "model.vision.patch_embedding.position_embedding.weight",
        "model.vision.transformer.layers.0.attention.query_key_value.weight",
        "model.vision.transformer.layers.0.attention.query_key_value.bias",
        "model.vision.transformer.layers.0.attention.dense.weight",
        "model.vision.transformer.layers.0.mlp.fc1.weight",
        "model.vision.transformer.layers.0.mlp.fc2.bias",
        "model.vision.transformer.layers.1.input_layernorm.weight",
        "model.vision.transformer.layers.1.post_attention_layernorm.bias",
        "model.vision.conv.weight",
        "model.vision.conv.bias",
        "model.vision.linear_proj.linear_proj.weight",
        "model.vision.linear_proj.norm1.weight",
        "model.vision.linear_proj.norm1.bias",
        "model.vision.linear_proj.gate_proj.weight",
        "model.vision.linear_proj.dense_h_to_4h.weight",
        "model.vision.linear_proj.dense_4h_to_h.weight",
        "model.vision.boi",
        "model.vision.eoi",
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.language_expert_query_key_value.weight",
        "model.layers.0.self_attn.language_expert_dense.weight",
        "model.layers.0.mlp.language_mlp.gate_proj.weight",
        "model.layers.0.mlp.language_mlp.up_proj.weight",
        "model.layers.0.mlp.language_mlp.down_proj.weight",
        "model.layers.1.input_layernorm.weight",
        "model.layers.1.post_attention_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight",
    ]
    vision_only = [
        "model.layers.0.self_attn.vision_expert_query_key_value.weight",
        "model.layers.0.self_attn.vision_expert_query_key_value.bias",
        "model.layers.0.self_attn.vision_expert_dense.weight",
        "model.layers.0.mlp.vision_mlp.gate_proj.weight",
        "model.layers.1.mlp.vision_mlp.down_proj.weight",
    ]
    for key in expected:
        assert key in image and key in video, key
    for key in vision_only:
        assert key in image and key not in video, key
    assert not any("vision_expert" in k or "vision_mlp" in k for k in video)
    assert not any(k.endswith("bias") for k in image if "language_expert" in k)
    assert not any("inv_freq" in k for k in image)
    assert image["model.vision.boi"].shape == (1, 1, 512)
    assert image["model.vision.patch_embedding.cls_embedding"].shape == (1, 224)
    assert image["model.vision.conv.weight"].shape == (224, 224, 2, 2)
    assert image["model.layers.0.self_attn.language_expert_query_key_value.weight"].shape == (
        512 + 2 * 2 * 64,
        512,
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes(variant: str) -> None:
    model = make_model(variant)
    cfg = model.config
    ids, types, images = make_batch(cfg)
    vision = model.model.vision
    with torch.no_grad():
        patches = vision.embed_patches(images)
        assert patches.shape == (4, cfg.vision.num_positions, cfg.vision.hidden_size)
        tower = vision.run_vision_tower(patches)
        assert tower.shape == patches.shape
        out = vision.compress_and_adapt(tower)
        assert out.shape == (4, cfg.tokens_per_frame, cfg.text.hidden_size)
        # the model's stage methods are the tower's
        assert torch.equal(model.embed_patches(images), patches)
        assert torch.equal(model.compress_and_adapt(model.run_vision_tower(patches)), out)
        assert model.encode_frames(images).shape == (4, 18, 512)
        out = model(ids, types, images, use_cache=True)
    assert out.logits.shape == (2, ids.shape[1], cfg.text.vocab_size)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
    cache = out.past_key_values
    assert cache.num_layers == cfg.text.num_layers and cache.seq_len == ids.shape[1]
    assert cache.keys[0].shape == (2, cfg.text.num_kv_heads, ids.shape[1], cfg.text.head_dim)
    assert cache.last_position.tolist() == build_position_ids(types)[:, -1].tolist()


def test_init_is_seeded_and_not_degenerate(seed: int) -> None:
    a, b = make_model(seed=seed).state_dict(), make_model(seed=seed).state_dict()
    c = make_model(seed=seed + 1).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
        assert not torch.equal(a[k], c[k]), k
        assert a[k].std() > 0 if a[k].numel() > 1 else a[k].abs() > 0, k
    assert (a["model.norm.weight"] - 1).abs().max() < 0.6
    assert a["model.norm.weight"].mean().sub(1).abs() < 0.05


# ------------------------------------------------------- independent functional re-implementation


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def functional_vision(sd: dict[str, torch.Tensor], cfg, images: torch.Tensor) -> torch.Tensor:
    """EVA2-CLIP + adapter from the state dict: patchify by reshape, convs as GEMMs."""
    v, pre = cfg.vision, "model.vision."
    n, p, g, d, heads = images.shape[0], v.patch_size, v.grid, v.hidden_size, v.num_heads
    patches = images.reshape(n, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, -1)
    w = sd[pre + "patch_embedding.proj.weight"].reshape(d, -1)
    x = patches @ w.T + sd[pre + "patch_embedding.proj.bias"]
    cls = sd[pre + "patch_embedding.cls_embedding"].expand(n, 1, d)
    x = torch.cat([cls, x], 1) + sd[pre + "patch_embedding.position_embedding.weight"]
    for i in range(v.num_layers):
        q = f"{pre}transformer.layers.{i}."
        w_qkv, b_qkv = (sd[q + f"attention.query_key_value.{s}"] for s in ("weight", "bias"))
        qkv = F.linear(x, w_qkv, b_qkv)
        qs, ks, vs = (t.reshape(n, -1, heads, d // heads).transpose(1, 2) for t in qkv.chunk(3, -1))
        att = torch.softmax(qs @ ks.transpose(-1, -2) / math.sqrt(d // heads), -1) @ vs
        w_o, b_o = (sd[q + f"attention.dense.{s}"] for s in ("weight", "bias"))
        att = F.linear(att.transpose(1, 2).reshape(n, -1, d), w_o, b_o)
        ln1 = (sd[q + "input_layernorm.weight"], sd[q + "input_layernorm.bias"])
        h = x + F.layer_norm(att, (d,), *ln1, eps=v.layer_norm_eps)
        m = _gelu(F.linear(h, sd[q + "mlp.fc1.weight"], sd[q + "mlp.fc1.bias"]))
        m = F.linear(m, sd[q + "mlp.fc2.weight"], sd[q + "mlp.fc2.bias"])
        ln2 = (sd[q + "post_attention_layernorm.weight"], sd[q + "post_attention_layernorm.bias"])
        x = h + F.layer_norm(m, (d,), *ln2, eps=v.layer_norm_eps)
    grid = x[:, 1:].reshape(n, g // 2, 2, g // 2, 2, d).permute(0, 1, 3, 5, 2, 4)
    y = grid.reshape(n, (g // 2) ** 2, 4 * d) @ sd[pre + "conv.weight"].reshape(d, -1).T
    y = y + sd[pre + "conv.bias"]
    lp = pre + "linear_proj."
    y = F.linear(y, sd[lp + "linear_proj.weight"])
    dt = y.shape[-1]
    y = _gelu(F.layer_norm(y, (dt,), sd[lp + "norm1.weight"], sd[lp + "norm1.bias"], eps=1e-5))
    gate, up = (sd[lp + n] for n in ("gate_proj.weight", "dense_h_to_4h.weight"))
    y = F.silu(F.linear(y, gate)) * F.linear(y, up)
    y = F.linear(y, sd[lp + "dense_4h_to_h.weight"])
    return torch.cat([sd[pre + "boi"].expand(n, 1, dt), y, sd[pre + "eoi"].expand(n, 1, dt)], 1)


def _rope_complex(x: torch.Tensor, pos: torch.Tensor, theta: float, interleaved: bool):
    """Rotate pairs as complex numbers by pos * theta^(-2i/D); x [B, S, H, D].

    Pairs are (i, i + D/2) (rotate-half) or (2i, 2i + 1) (interleaved).
    """
    half = x.shape[-1] // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / x.shape[-1])
    rot = torch.polar(torch.ones_like(freq), pos[..., None].double() * freq)[:, :, None]
    if interleaved:
        z = torch.complex(x[..., 0::2], x[..., 1::2]) * rot
        return torch.stack([z.real, z.imag], -1).flatten(-2)
    z = torch.complex(x[..., :half], x[..., half:]) * rot
    return torch.cat([z.real, z.imag], -1)


def functional_lm(sd, cfg, ids, types, vision_rows) -> torch.Tensor:
    """The decoder from the state dict: both experts for every token, selected per token."""
    t, b, s = cfg.text, *ids.shape
    hq, hk, hd = t.num_heads, t.num_kv_heads, t.head_dim
    x = sd["model.embed_tokens.weight"][ids]
    x[types == VISION_TOKEN_TYPE] = vision_rows
    pos = build_position_ids(types)
    nxt = torch.cat([types[:, 1:], torch.zeros_like(types[:, :1])], 1)
    to_vision = ((types == 1) & (nxt == 1))[..., None]
    causal = torch.ones(s, s, dtype=torch.bool).tril()

    def rms(h, w):
        return w * h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + t.rms_norm_eps)

    def expert(h, name, lang_bias=None):
        out = F.linear(h, sd[name.format("language_expert")], lang_bias)
        if cfg.vision_expert:
            vis_name = name.format("vision_expert")
            out_v = F.linear(h, sd[vis_name], sd.get(vis_name.replace(".weight", ".bias")))
            out = torch.where(to_vision, out_v, out)
        return out

    def mlp(h, pre):
        out = None
        for e in ("language_mlp", "vision_mlp") if cfg.vision_expert else ("language_mlp",):
            g, u, dn = (sd[f"{pre}{e}.{n}_proj.weight"] for n in ("gate", "up", "down"))
            y = F.linear(F.silu(F.linear(h, g)) * F.linear(h, u), dn)
            out = y if out is None else torch.where(to_vision, y, out)
        return out

    for i in range(t.num_layers):
        pre = f"model.layers.{i}."
        h = rms(x, sd[pre + "input_layernorm.weight"])
        qkv = expert(h, pre + "self_attn.{}_query_key_value.weight")
        q, k, v = qkv.split([hq * hd, hk * hd, hk * hd], -1)
        q = _rope_complex(q.reshape(b, s, hq, hd), pos, t.rope_theta, t.rope_interleaved)
        k = _rope_complex(k.reshape(b, s, hk, hd), pos, t.rope_theta, t.rope_interleaved)
        v = v.reshape(b, s, hk, hd)
        group = torch.arange(hq) // (hq // hk)  # query head -> its key/value head
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k[:, :, group]) / math.sqrt(hd)
        probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)
        ctx = torch.einsum("bhqk,bkhd->bqhd", probs, v[:, :, group]).reshape(b, s, hq * hd)
        x = x + expert(ctx, pre + "self_attn.{}_dense.weight")
        x = x + mlp(rms(x, sd[pre + "post_attention_layernorm.weight"]), pre + "mlp.")
    return F.linear(rms(x, sd["model.norm.weight"]), sd["lm_head.weight"])


def test_vision_tower_matches_functional(seed: int) -> None:
    model = make_model(seed=seed).double()
    images = torch.randn(2, 3, 112, 112, dtype=torch.float64)
    with torch.no_grad():
        got = model.encode_frames(images)
        want = functional_vision(model.state_dict(), model.config, images)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"seed {seed}")


@pytest.mark.parametrize(
    ("variant", "rope_interleaved"),
    [("image", False), ("video-base", False), ("video-chat", True)],
)
def test_language_model_matches_functional(variant: str, rope_interleaved: bool, seed: int) -> None:
    """Also names the inferred RoPE pairing: rotate-half by default, interleaved as a switch."""
    model = make_model(variant, seed=seed, text={"rope_interleaved": rope_interleaved}).double()
    cfg = model.config
    ids, types, images = make_batch(cfg)
    with torch.no_grad():
        got = model(ids, types, images.double()).logits
        rows = model.encode_frames(images.double()).reshape(-1, cfg.text.hidden_size)
        want = functional_lm(model.state_dict(), cfg, ids, types, rows)
    # the model's RoPE angles are fp32 (as in the release), the functional one's fp64
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5, msg=f"seed {seed}")


# ------------------------------------------------------------------------------ attention impls


@pytest.mark.parametrize("variant", ["video-chat", "image"])
def test_sdpa_matches_eager(variant: str, seed: int) -> None:
    model = make_model(variant, seed=seed)
    ids, types, images = make_batch(model.config)
    with torch.no_grad():
        sdpa = model(ids, types, images, use_cache=True)
        step = torch.randint(0, 256, (2, 1))
        sdpa_step = model(step, torch.zeros_like(step), past_key_values=sdpa.past_key_values)
        model.attn_impl = "eager"
        eager = model(ids, types, images, use_cache=True)
        eager_step = model(step, torch.zeros_like(step), past_key_values=eager.past_key_values)
    assert model.model.layers[0].self_attn.attn_impl == "eager"
    assert model.model.vision.transformer.layers[0].attention.attn_impl == "eager"
    # logits are O(1); fp32 reassociation differences across two layers stay ~1e-5
    torch.testing.assert_close(sdpa.logits, eager.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(sdpa_step.logits, eager_step.logits, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="attn_impl"):
        model.attn_impl = "flash"


def test_eager_chunked_prefill_matches_full(seed: int) -> None:
    """A multi-token chunk on top of a cache (offset causal mask) equals one full pass."""
    model = make_model(seed=seed)
    ids, types, images = make_batch(model.config)
    cut = types.shape[1] - 7  # inside the question text
    for impl in ("sdpa", "eager"):
        model.attn_impl = impl
        with torch.no_grad():
            full = model(ids, types, images).logits
            head = model(ids[:, :cut], types[:, :cut], images, use_cache=True)
            tail = model(ids[:, cut:], types[:, cut:], past_key_values=head.past_key_values)
        torch.testing.assert_close(tail.logits, full[:, cut:], rtol=0, atol=2e-5)


def test_causal(seed: int) -> None:
    model = make_model(seed=seed)
    ids, types, images = make_batch(model.config)
    k = ids.shape[1] - 5
    changed = ids.clone()
    changed[:, k] = (changed[:, k] + 1 + torch.randint(0, 200, (2,))) % 256
    with torch.no_grad():
        a = model(ids, types, images).logits
        b = model(changed, types, images).logits
    torch.testing.assert_close(a[:, :k], b[:, :k], rtol=0, atol=1e-6)
    assert (a[:, k:] - b[:, k:]).abs().amax() > 1e-3


# ------------------------------------------------------------------------------------ routing


def test_image_variant_routes_vision_tokens(seed: int) -> None:
    model = make_model("image", seed=seed)
    cfg = model.config
    tok = ByteTokenizer()
    with_frames = build_prompt(tok, "abc", 2, cfg)
    text_only = build_prompt(tok, "x" * (len(with_frames) - 1 - len("Question:  Answer:")), 0, cfg)
    ids, types = stack_prompts([with_frames, text_only])
    images = torch.randn(2, 3, 112, 112)
    routed = torch.zeros_like(types, dtype=torch.bool)
    routed[0, :-1] = (types[0, :-1] == 1) & (types[0, 1:] == 1)
    first_vision = with_frames.vision_slices[0].start
    with torch.no_grad():
        before = model(ids, types, images).logits
        w = model.model.layers[-1].mlp.vision_mlp.down_proj.weight
        w.add_(0.05 * torch.randn_like(w))
        after = model(ids, types, images).logits
    diff = (after - before).abs().amax(-1)
    assert (diff[routed] > 1e-4).all()  # the last layer's vision MLP acts exactly there
    assert diff[~routed].max() == 0  # ...and nowhere else: not eoi, not text, not the 2nd sequence
    assert diff[0, :first_vision].max() == 0 and diff[1].max() == 0


def test_image_with_copied_experts_equals_video(seed: int) -> None:
    """Vision-expert weights equal to the language ones (zero QKV bias) -> the video model."""
    image = make_model("image", seed=seed)
    video = make_model("video-chat", seed=seed + 1)
    sd = image.state_dict()
    video.load_state_dict({k: v for k, v in sd.items() if k in video.state_dict()})
    for k in sd:
        if "vision_expert" in k or "vision_mlp" in k:
            src = k.replace("vision_", "language_")
            sd[k] = torch.zeros_like(sd[k]) if k.endswith("bias") else sd[src]
    image.load_state_dict(sd)
    ids, types, images = make_batch(image.config)
    with torch.no_grad():
        torch.testing.assert_close(
            image(ids, types, images).logits, video(ids, types, images).logits, rtol=0, atol=5e-5
        )
        image.model.layers[0].self_attn.vision_expert_query_key_value.bias.add_(0.1)
        moved = image(ids, types, images).logits
    assert (moved - video(ids, types, images).logits).abs().amax() > 1e-3


# ------------------------------------------------------------------------------ dtypes, inputs


def test_vision_embeds_equal_images(seed: int) -> None:
    model = make_model(seed=seed)
    ids, types, images = make_batch(model.config)
    with torch.no_grad():
        a = model(ids, types, images).logits
        feats = model.encode_frames(images)
        b = model(ids, types, vision_embeds=feats).logits
        c = model(ids, types, vision_embeds=feats.reshape(-1, feats.shape[-1])).logits
        d = model(ids, types, images.flip(0)).logits  # frames fill slots in order
    assert torch.equal(a, b) and torch.equal(a, c)
    assert (a - d).abs().amax() > 1e-3


def test_rmsnorm_in_fp32() -> None:
    norm = RMSNorm(64, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(64))
    x = (torch.randn(3, 64) * 30).to(torch.bfloat16)
    xf = x.float()
    want = (norm.weight * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).bfloat16()
    assert torch.equal(norm(x), want)


def test_bf16_model_keeps_fp32_rope_and_tracks_fp32(seed: int) -> None:
    model = make_model(seed=seed)
    ids, types, images = make_batch(model.config)
    with torch.no_grad():
        ref = model(ids, types, images).logits
        rope = model.model.layers[0].self_attn.rotary_emb
        inv_freq = rope.inv_freq.clone()
        model.to(torch.bfloat16)
        assert rope.inv_freq.dtype == torch.float32 and torch.equal(rope.inv_freq, inv_freq)
        low = model(ids, types, images).logits
    assert low.dtype == torch.float32
    rel = (low - ref).norm() / ref.norm()
    assert rel < 0.05, rel


def test_normalize_frames(seed: int) -> None:
    frames = torch.randint(0, 256, (3, 10, 12, 3), dtype=torch.uint8)
    got = normalize_frames(frames)
    want = (frames.numpy().astype(np.float64) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert got.shape == (3, 3, 10, 12) and got.dtype == torch.float32
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        normalize_frames(frames.float())
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        normalize_frames(frames[..., :2])


def test_bad_inputs_raise_value_errors() -> None:
    model = make_model()
    ids, types, images = make_batch(model.config)
    with torch.no_grad():
        with pytest.raises(ValueError, match="frames"):
            model(ids, types, images[:3])  # 3 frames for 4 frames' slots
        with pytest.raises(ValueError, match="frames"):
            model(ids, types, images[:, :, :100])
        with pytest.raises(ValueError, match="neither frames nor vision_embeds"):
            model(ids, types)
        with pytest.raises(ValueError, match="token_type_ids"):
            model(ids, types[:, :-1], images)
        with pytest.raises(ValueError, match="token_type_ids"):
            model(ids, types * 2, images)
        with pytest.raises(ValueError, match="input_ids"):
            model(ids + 1000, types, images)
        with pytest.raises(ValueError, match="input_ids"):
            model(ids[0], types[0], images)
        with pytest.raises(ValueError, match="not both"):
            model(ids, types, images, vision_embeds=torch.zeros(4, 18, 512))
        with pytest.raises(ValueError, match="vision_embeds"):
            model(ids, types, vision_embeds=torch.randn(3, 18, 512))
        with pytest.raises(ValueError, match="position_ids"):
            model(ids, types, images, position_ids=torch.zeros(2, 3, dtype=torch.long))
        cache = model(ids, types, images, use_cache=True).past_key_values
        with pytest.raises(ValueError, match="past_key_values"):
            model(ids[:1, :1], types[:1, :1], past_key_values=cache)
        short = make_model(text={"max_position_embeddings": 16})
        text = torch.randint(0, 256, (1, 17))
        with pytest.raises(ValueError, match="max_position_embeddings"):
            short(text, torch.zeros_like(text))
        with pytest.raises(ValueError, match="frames"):
            model.encode_frames(images.to(torch.uint8))  # uint8 must be channels last


def test_uint8_frames_and_the_generate_stage(seed: int) -> None:
    """The stage interface the fast model shares: uint8 frames (normalized inside, as
    `normalize_frames`), and ``generate`` (greedy_generate, with the prefill timed apart)."""
    model = make_model("video-chat", seed % 1000)
    ids, types, _ = make_batch(model.config)
    s = model.config.vision.image_size
    u8 = torch.randint(0, 256, (4, s, s, 3), dtype=torch.uint8)
    with torch.no_grad():
        a = model(ids, types, u8).logits
        assert torch.equal(a, model(ids, types, normalize_frames(u8)).logits)
    timings: dict = {}
    out = model.generate(ids, types, u8, max_new_tokens=3, timings=timings)
    assert torch.equal(out, greedy_generate(model, ids, types, u8, max_new_tokens=3))
    assert torch.equal(out[:, 0], a[:, -1].argmax(-1))
    assert timings["decode_tokens"] == 2 * ids.shape[0]
    assert timings["prefill_s"] > 0 and timings["decode_s"] > 0  # two forwards were timed
