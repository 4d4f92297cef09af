"""Presets, validation, and parameter counts (the full model is never allocated)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from haic_kernels.models.cogvlm2 import (
    PRESET_SIZES,
    VARIANTS,
    CogVLM2ForCausalLM,
    TextConfig,
    VisionConfig,
    count_parameters,
    get_config,
)


def test_full_preset_is_the_release() -> None:
    cfg = get_config("full", "video-chat")
    v, t = cfg.vision, cfg.text
    vision = (v.image_size, v.patch_size, v.hidden_size, v.num_layers, v.num_heads)
    assert vision == (224, 14, 1792, 63, 16)
    assert (v.intermediate_size, v.head_dim, v.grid, v.num_positions) == (15360, 112, 16, 257)
    text = (t.hidden_size, t.num_layers, t.num_heads, t.num_kv_heads, t.head_dim)
    assert text == (4096, 32, 32, 8, 128)
    assert (t.intermediate_size, t.vocab_size, t.qkv_size, t.gqa_ratio) == (14336, 128256, 6144, 4)
    assert (t.rope_theta, t.rms_norm_eps, v.layer_norm_eps) == (500000.0, 1e-5, 1e-6)
    assert cfg.adapter_intermediate_size == 14336 and cfg.adapter_layer_norm_eps == 1e-5
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (128000, 128001, 128002)
    assert cfg.tokens_per_frame == 66 and cfg.max_frames == 24
    assert not cfg.vision_expert and cfg.template == "chat"


def test_tiny_preset_shapes() -> None:
    cfg = get_config()  # tiny, video-chat
    assert cfg.vision.grid == 8 and cfg.tokens_per_frame == 18
    assert cfg.vision.head_dim == 112  # the full model's vision head dim
    assert cfg.text.head_dim == 64 and cfg.text.gqa_ratio == 4
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (256, 257, 258)


def test_small_preset_kernel_shapes() -> None:
    cfg = get_config("small")
    assert cfg.vision.image_size == 224 and cfg.tokens_per_frame == 66
    assert cfg.vision.head_dim == 112 and cfg.text.head_dim == 128 and cfg.text.gqa_ratio == 4
    assert cfg.text.vocab_size == 128256


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants(variant: str) -> None:
    cfg = get_config("tiny", variant)
    assert cfg.vision_expert == (variant == "image")
    assert cfg.template == ("base" if variant == "video-base" else "chat")
    assert cfg.name == f"cogvlm2-{variant}-tiny"


def test_full_parameter_counts() -> None:
    video = count_parameters(get_config("full", "video-chat"))["total"]
    image = count_parameters(get_config("full", "image"))["total"]
    # the released video checkpoint's shards hold 25.02 GB of bf16 tensors: ~12.5 B parameters
    assert 12.0e9 < video < 13.0e9, video
    assert 18.5e9 < image < 20.0e9, image


@pytest.mark.parametrize("size", PRESET_SIZES)
@pytest.mark.parametrize("variant", ["video-chat", "image"])
def test_counts_match_the_module_tree_on_meta(size: str, variant: str) -> None:
    cfg = get_config(size, variant)
    with torch.device("meta"):
        model = CogVLM2ForCausalLM(cfg)
    params = dict(model.named_parameters())
    assert sum(p.numel() for p in params.values()) == count_parameters(cfg)["total"]
    # every state_dict entry is a parameter: no persistent buffer sneaks in
    assert set(model.state_dict()) == set(params)


def test_overrides() -> None:
    cfg = get_config("tiny", "image", text={"num_layers": 1}, max_frames=3, template="base")
    assert cfg.text.num_layers == 1 and cfg.max_frames == 3 and cfg.template == "base"
    assert cfg.vision_expert
    big = get_config("full", "image", vision={"image_size": 1344})  # the released image tower
    assert big.vision.num_positions == 9217 and big.tokens_per_frame == 2306
    with pytest.raises(ValueError, match="unknown override"):
        get_config("tiny", layers=3)
    with pytest.raises(ValueError, match="size"):
        get_config("huge")
    with pytest.raises(ValueError, match="variant"):
        get_config("tiny", "audio")


def test_validation_messages() -> None:
    base = get_config()
    with pytest.raises(ValueError, match="num_kv_heads"):
        dataclasses.replace(base.text, num_kv_heads=3)
    with pytest.raises(ValueError, match="head_dim"):
        TextConfig(
            hidden_size=60, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=15,
            intermediate_size=8, vocab_size=10,
        )  # fmt: skip
    with pytest.raises(ValueError, match="hidden_size"):
        dataclasses.replace(base.text, hidden_size=500)
    with pytest.raises(ValueError, match="patch_size"):
        VisionConfig(100, 14, 224, 1, 2, 448)
    with pytest.raises(ValueError, match="num_heads"):
        VisionConfig(112, 14, 224, 1, 3, 448)
    with pytest.raises(ValueError, match="even"):
        get_config(vision={"image_size": 98})  # 7x7 grid
    with pytest.raises(ValueError, match="template"):
        get_config(template="chat_old")  # CogVLM1's, not a CogVLM2 template
    with pytest.raises(ValueError, match="pad_token_id"):
        get_config(pad_token_id=384)
    with pytest.raises(ValueError, match="num_layers"):
        get_config(text={"num_layers": 0})
    with pytest.raises(ValueError, match="vision_expert"):
        get_config(vision_expert=1)


def test_nan_inf_and_new_fields_are_validated() -> None:
    import math

    base = get_config()
    for bad in (math.nan, math.inf, -1e-5, 0.0):
        with pytest.raises(ValueError, match="rms_norm_eps must be a positive finite"):
            dataclasses.replace(base.text, rms_norm_eps=bad)
    with pytest.raises(ValueError, match="rope_theta"):
        dataclasses.replace(base.text, rope_theta=math.inf)
    with pytest.raises(ValueError, match="rope_precision"):
        get_config(text={"rope_precision": "bf16"})
    with pytest.raises(ValueError, match="context_length"):
        get_config(text={"context_length": 0})
    with pytest.raises(ValueError, match="eos_token_ids"):
        get_config(eos_token_ids=())
    with pytest.raises(ValueError, match=r"eos_token_ids\[1\]"):
        get_config(eos_token_ids=(257, 999))
    with pytest.raises(ValueError, match="eos_token_ids"):
        get_config(eos_token_ids=[257])
    with pytest.raises(ValueError, match="adapter_layer_norm_eps"):
        get_config(adapter_layer_norm_eps=math.nan)


def test_stop_ids_and_context_of_the_release_presets() -> None:
    assert get_config("full", "image").eos_token_ids == (128001, 128009)
    assert get_config("full", "video-chat").eos_token_ids == (128001,)
    assert get_config("full", "video-chat").eos_token_id == 128001
    video = get_config("full", "video-chat").text
    assert (video.max_position_embeddings, video.position_limit) == (2048, 8192)
    assert get_config("full", "image").text.position_limit == 8192
    assert get_config().text.rope_precision == "release"


def test_the_reference_lm_takes_rope_precision_from_the_config() -> None:
    from haic_kernels.models.cogvlm2.reference import CogVLM2ForCausalLM

    for precision in ("release", "fp32"):
        cfg = get_config(text={"num_layers": 1, "rope_precision": precision},
                         vision={"num_layers": 1})  # fmt: skip
        with torch.device("meta"):
            model = CogVLM2ForCausalLM(cfg)
        assert model.model.layers[0].self_attn.rotary_emb.precision == precision
