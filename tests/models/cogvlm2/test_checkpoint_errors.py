"""Issue 11's checkpoint cases, each a CheckpointError (or an error naming the argument) raised
before any tensor is read: an int32 weight, a config.json that is a list or holds NaN, a bad
device or dtype; and a checkpoint found by repo id in the local HF cache."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from haic_kernels.models.cogvlm2 import get_config
from haic_kernels.models.cogvlm2 import weights as W
from haic_kernels.models.cogvlm2.reference import CogVLM2ForCausalLM, init_random_weights


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = get_config("tiny", "video-chat", text={"num_layers": 1}, vision={"num_layers": 1})
    model = init_random_weights(CogVLM2ForCausalLM(cfg), seed=0)
    d = tmp_path_factory.mktemp("tiny")
    W.save_checkpoint(model, d, config=cfg)
    return d, cfg, model


def _copy(src, dst):
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_int32_weight_is_refused_from_the_header(ckpt, tmp_path, monkeypatch):
    d = _copy(ckpt[0], tmp_path)
    sd = load_file(d / "model.safetensors")
    name = "model.layers.0.mlp.language_mlp.up_proj.weight"
    sd[name] = sd[name].to(torch.int32)
    save_file(sd, d / "model.safetensors")
    read = []
    monkeypatch.setattr(W, "_read_file", lambda *a, **k: read.append(a) or iter(()))
    with pytest.raises(W.CheckpointError, match=rf"{name} \(model.safetensors\): torch.int32"):
        W.load_pretrained(d, dtype=torch.float32)
    assert read == []  # refused before any tensor data was read


def test_config_that_is_a_list_or_nan(ckpt, tmp_path):
    d = _copy(ckpt[0], tmp_path)
    (d / "config.json").write_text("[]")
    with pytest.raises(W.CheckpointError, match=r"config\.json: expected a JSON object, got list"):
        W.load_pretrained(d)
    hf = W.config_to_hf(ckpt[1])
    hf["rms_norm_eps"] = float("nan")
    (d / "config.json").write_text(json.dumps(hf))
    with pytest.raises(W.CheckpointError, match="rms_norm_eps"):
        W.load_pretrained(d)


def test_device_and_dtype_arguments_are_named(ckpt):
    with pytest.raises(ValueError, match="device='bfloat16' is a dtype"):
        W.load_pretrained(ckpt[0], device="bfloat16")
    with pytest.raises(TypeError, match="dtype"):
        W.load_pretrained(ckpt[0], dtype="cpu")
    with pytest.raises(ValueError, match="device"):
        W.load_state_dict_from_dir(ckpt[0], device="nowhere")


def test_load_by_repo_id_from_the_local_cache(ckpt, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub", reason="needs the `hub` extra (huggingface_hub)")
    import huggingface_hub.constants as hc

    src, cfg, model = ckpt
    commit = "1" * 40
    repo = tmp_path / "models--someone--tiny-cogvlm2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    _copy(src, snap)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    got = W.load_pretrained("someone/tiny-cogvlm2", dtype=None)
    assert got.config == cfg
    assert torch.equal(got.lm_head.weight, model.lm_head.weight)
    with pytest.raises(W.CheckpointNotFoundError, match="'someone/absent' is neither"):
        W.load_pretrained("someone/absent")


def test_stored_inv_freq_is_compared_with_the_release_one(ckpt, tmp_path):
    from haic_kernels.models.cogvlm2.language import rope_inv_freq

    d = _copy(ckpt[0], tmp_path)
    t = ckpt[1].text
    sd = load_file(d / "model.safetensors")
    name = "model.layers.0.self_attn.rotary_emb.inv_freq"
    sd[name] = rope_inv_freq(t.head_dim, t.rope_theta, torch.bfloat16)  # as HF builds it in bf16
    save_file(sd, d / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        W.load_pretrained(d, dtype=torch.bfloat16)
    sd[name] = rope_inv_freq(t.head_dim, t.rope_theta, torch.float32)  # fp32, rounded at load
    save_file(sd, d / "model.safetensors")
    with pytest.warns(UserWarning, match="differs from the inv_freq haic builds"):
        W.load_pretrained(d, dtype=torch.bfloat16)
