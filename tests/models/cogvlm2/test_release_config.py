"""The releases' real config.json (tests/fixtures/releases), the release's defaults for every
key, malformed files (issue 11: each a CheckpointError naming the file and the key), the
tokenizer check that runs before any weight is read, and Hub repo ids from the local cache."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from haic_kernels.models.cogvlm2 import get_config
from haic_kernels.models.cogvlm2.checkpoint_layout import (
    CheckpointError,
    CheckpointNotFoundError,
    check_device,
    check_float_dtype,
    resolve_checkpoint,
)
from haic_kernels.models.cogvlm2.hf_config import RELEASE_DEFAULTS, config_from_hf, read_config_dir
from haic_kernels.models.cogvlm2.tokenizer import load_tokenizer
from tests.models.cogvlm2._llama3 import MetaEncoder, write_tokenizer_json

RELEASES = Path(__file__).parents[2] / "fixtures" / "releases"
CAPTION = RELEASES / "cogvlm2-llama3-caption"


def _caption() -> dict:
    return json.loads((CAPTION / "config.json").read_text())


def test_caption_release_config_loads_as_the_video_model():
    cfg = read_config_dir(CAPTION)
    want = get_config("full", "video-chat", template="base")
    assert cfg.vision == want.vision
    assert cfg.text == want.text  # 8 kv heads, head dim 128, RoPE 500000, context 8192
    assert (cfg.vision_expert, cfg.template, cfg.eos_token_ids) == (False, "base", (128001,))
    assert cfg.text.max_position_embeddings == 2048 and cfg.text.position_limit == 8192
    assert (cfg.bos_token_id, cfg.pad_token_id, cfg.tokens_per_frame) == (128000, 128002, 66)


def test_absent_keys_take_the_release_class_defaults():
    """The image release's file has no num_multi_query_heads: CogVLMConfig's default is 8, not the
    head count. Same rule for every other key the class defaults."""
    hf = _caption()
    for key in ("num_multi_query_heads", "vocab_size", "rms_norm_eps", "pad_token_id",
                "template_version", "max_position_embeddings", "eos_token_id"):  # fmt: skip
        hf.pop(key)
    cfg = config_from_hf(hf)
    assert cfg.text.num_kv_heads == RELEASE_DEFAULTS["num_multi_query_heads"] == 8
    assert cfg.text.vocab_size == 128256 and cfg.text.rms_norm_eps == 1e-5
    assert cfg.template == "chat" and cfg.pad_token_id == 128002
    assert cfg.text.max_position_embeddings == 8192 and cfg.eos_token_ids == (128001,)


def test_image_release_shape_from_the_caption_file_with_the_image_facts():
    """Derived, not the image release's file (not found in the stored copies): the caption file
    with MODEL_SPEC's image facts - expert architecture, no num_multi_query_heads, 1344 px,
    eos [128001, 128009] - loads as the image model (the 96 shape mismatches of issue 12)."""
    hf = _caption()
    del hf["num_multi_query_heads"]
    hf.update(architectures=["CogVLMForCausalLM"], eos_token_id=[128001, 128009],
              max_position_embeddings=8192, template_version="chat")  # fmt: skip
    hf["vision_config"].update(image_size=1344, num_positions=9217)
    cfg = config_from_hf(hf)
    want = get_config("full", "image", vision={"image_size": 1344})
    assert cfg.text == want.text and cfg.vision == want.vision
    assert cfg.vision_expert and cfg.eos_token_ids == (128001, 128009)
    assert cfg.tokens_per_frame == 2306


def test_generation_config_eos_ids_are_added(tmp_path):
    shutil.copy(CAPTION / "config.json", tmp_path / "config.json")
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
    assert read_config_dir(tmp_path).eos_token_ids == (128001, 128009)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda hf: hf.update(hidden_size="4096"), "hidden_size must be an integer"),
        (lambda hf: hf.update(num_hidden_layers=32.0), "num_hidden_layers must be an integer"),
        (lambda hf: hf.update(rms_norm_eps=math.nan), "rms_norm_eps must be a positive finite"),
        (lambda hf: hf.update(rms_norm_eps=math.inf), "rms_norm_eps must be a positive finite"),
        (lambda hf: hf.update(rms_norm_eps=0), "rms_norm_eps must be a positive finite"),
        (lambda hf: hf.update(num_attention_heads=-32), "num_attention_heads must be positive"),
        (lambda hf: hf["vision_config"].update(layer_norm_eps=-1e-6), "vision_config.layer_norm"),
        (lambda hf: hf["vision_config"].update(image_size="224"), "vision_config.image_size"),
        (lambda hf: hf["vision_config"].pop("patch_size"), "vision_config lacks patch_size"),
        (lambda hf: hf.update(eos_token_id="128001"), "eos_token_id"),
        (lambda hf: hf.update(template_version="chat_old"), "template_version"),
        (lambda hf: hf.update(hidden_act="gelu"), "hidden_act"),
        (lambda hf: hf.update(num_multi_query_heads=5), "num_kv_heads"),
    ],
)
def test_malformed_config_names_file_and_key(tmp_path, edit, match):
    hf = _caption()
    edit(hf)
    # allow_nan: what a file written by Python's json holds for NaN / Infinity
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match=match) as e:
        read_config_dir(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"[1, 2, 3]", "expected a JSON object, got list"),
        (b'{"hidden_size": 4096', "not valid JSON"),
        ('{"a": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
    ],
)
def test_unreadable_config_files(tmp_path, content, match):
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as e:
        read_config_dir(tmp_path)
    assert "config.json" in str(e.value)


def test_nan_in_config_json_does_not_load(tmp_path):
    """Python's json writes NaN as a bare token and reads it back: it must still be refused."""
    text = (
        (CAPTION / "config.json")
        .read_text()
        .replace('"rms_norm_eps": 1e-05', '"rms_norm_eps": NaN')
    )
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match="rms_norm_eps"):
        read_config_dir(tmp_path)


def test_device_and_dtype_arguments():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device='bfloat16' is a dtype"):
        check_device("bfloat16")
    with pytest.raises(ValueError, match="device='bogus'"):
        check_device("bogus")
    with pytest.raises(TypeError, match="device"):
        check_device(3.5)
    assert check_float_dtype("bfloat16") is torch.bfloat16 and check_float_dtype(None) is None
    with pytest.raises(ValueError, match="floating-point"):
        check_float_dtype(torch.int32)
    with pytest.raises(TypeError, match="dtype"):
        check_float_dtype("cuda")


# ---------------------------------------------------------------------------------------------
# tokenizer: loaded and checked before any weight


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    shutil.copy(CAPTION / "config.json", d / "config.json")
    write_tokenizer_json(d)
    return d


def test_tokenizer_json_is_metas_tokenizer(llama3_dir):
    tok = load_tokenizer(llama3_dir)
    meta = MetaEncoder()
    for text in ["Question: What happens at 0:12? Answer:", "12345 cats\n\ncafé 東京 ..!", "7"]:
        assert tok.encode(text) == meta.encode(text)
    assert tok.token(128000) == "<|begin_of_text|>" and tok.token(128009) == "<|eot_id|>"
    assert tok.decode([128000, *tok.encode("a cat"), 128009]) == "a cat"


def test_tokenizer_checks(llama3_dir, tmp_path):
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(llama3_dir / f, tmp_path / f)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"})
    )
    load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|eot_id|>"}))
    with pytest.raises(CheckpointError, match=r"bos_token '<\|eot_id\|>' is id 128009"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    small = get_config("full", "video-chat", text={"vocab_size": 1000}, bos_token_id=1,
                       pad_token_id=2, eos_token_ids=(3,))  # fmt: skip
    with pytest.raises(CheckpointError, match="more than the config's vocab_size"):
        load_tokenizer(tmp_path, small)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"not a readable tokenizer\.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(CheckpointNotFoundError, match=r"no tokenizer\.json"):
        load_tokenizer(tmp_path)


# ---------------------------------------------------------------------------------------------
# Hub repo ids, from the local cache only


def test_repo_id_resolves_from_the_local_cache_only(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub", reason="needs the `hub` extra (huggingface_hub)")
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    rid = "THUDM/cogvlm2-llama3-caption"
    with pytest.raises(CheckpointNotFoundError, match="'THUDM/cogvlm2-llama3-caption' is neither"):
        resolve_checkpoint(rid, cache_dir=cache)
    # a cached snapshot, laid out as huggingface_hub lays it out
    repo = cache / "models--THUDM--cogvlm2-llama3-caption"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    shutil.copy(CAPTION / "config.json", snap / "config.json")
    got = resolve_checkpoint(rid, cache_dir=cache)
    assert got == snap and read_config_dir(got).text.num_kv_heads == 8
    assert hub is not None
    # an existing local directory wins over a repo id of the same spelling
    local = tmp_path / "THUDM" / "cogvlm2-llama3-caption"
    local.mkdir(parents=True)
    assert resolve_checkpoint("THUDM/cogvlm2-llama3-caption") == Path(
        "THUDM/cogvlm2-llama3-caption"
    )
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")
