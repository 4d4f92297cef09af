"""Checkpoint I/O: HF safetensors layout (single file and sharded), strict validation, config.json.

Most tests use a small nested module of mixed dtypes (fp32, bf16, fp16, int64, bool), filled with
random non-zero values, so that a dropped, reordered, truncated or re-cast tensor changes the
comparison. The tests at the end use the real tiny CogVLM2 model and skip until reference.py lands.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from haic_kernels.models.cogvlm2 import config as config_mod
from haic_kernels.models.cogvlm2 import reference
from haic_kernels.models.cogvlm2 import weights as W
from haic_kernels.models.cogvlm2.weights import (
    KNOWN_IGNORED,
    SAFE_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointError,
    CheckpointNotFoundError,
    load_checkpoint,
    load_state_dict_from_dir,
    parameters_on_meta,
    parse_size,
    save_checkpoint,
)

# ----------------------------------------------------------------------------------------------
# a toy model with nested names and several dtypes


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.self_attn = nn.Module()
        self.self_attn.language_expert_query_key_value = nn.Linear(d, 3 * d, bias=False)
        self.self_attn.language_expert_dense = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)
        inv_freq = 1.0 / (500000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
        self.register_buffer("inv_freq", inv_freq, persistent=False)


class Toy(nn.Module):
    def __init__(self, d: int = 8, n: int = 3, vocab: int = 11) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, d)
        self.model.layers = nn.ModuleList([_Block(d) for _ in range(n)])
        self.model.boi = nn.Parameter(torch.zeros(1, 1, d))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("step", torch.zeros(4, dtype=torch.int64))
        self.register_buffer("keep", torch.zeros(5, dtype=torch.bool))
        if n > 1:
            self.model.layers[1].to(torch.bfloat16)
        if n > 2:
            self.model.layers[2].to(torch.float16)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.model.embed_tokens(ids) + self.model.boi[0]
        for layer in self.model.layers:
            x = h.to(layer.norm.weight.dtype)
            x = layer.norm(x + layer.mlp(layer.self_attn.language_expert_dense(x)))
            h = x.float()
        return self.lm_head(h)


def _randomize_(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """Fill every parameter and persistent buffer with random non-zero values of its dtype."""
    with torch.no_grad():
        for t in module.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                r = torch.randn(t.shape, generator=gen, dtype=torch.float32)
                t.copy_(r + torch.where(r >= 0, 0.5, -0.5))  # |x| >= 0.5: never zero
            elif t.dtype == torch.bool:
                t.copy_(torch.randint(0, 2, t.shape, generator=gen).bool())
            else:
                t.copy_(torch.randint(1, 1000, t.shape, generator=gen))
    return module


@pytest.fixture
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def toy(gen: torch.Generator) -> Toy:
    return _randomize_(Toy(), gen)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b) or sorted(a) == sorted(b), (sorted(a), sorted(b))
    for k in a:
        assert a[k].dtype == b[k].dtype, (k, a[k].dtype, b[k].dtype)
        assert a[k].shape == b[k].shape, (k, a[k].shape, b[k].shape)
        assert torch.equal(a[k], b[k]), k


def _nbytes(sd: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


# ----------------------------------------------------------------------------------------------
# round trips


def test_roundtrip_single_file(toy: Toy, tmp_path: Path) -> None:
    sd = toy.state_dict()
    assert {t.dtype for t in sd.values()} >= {torch.float32, torch.bfloat16, torch.float16}
    written = save_checkpoint(toy, tmp_path)
    assert written == [tmp_path / SAFE_WEIGHTS_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == [SAFE_WEIGHTS_NAME]
    _assert_same(sd, load_state_dict_from_dir(tmp_path))
    assert "inv_freq" not in " ".join(load_state_dict_from_dir(tmp_path))  # non-persistent


def test_roundtrip_sharded(toy: Toy, tmp_path: Path) -> None:
    sd = toy.state_dict()
    total = _nbytes(sd)
    save_checkpoint(sd, tmp_path, max_shard_size=total // 4)
    index = json.loads((tmp_path / SAFE_INDEX_NAME).read_text())
    shards = sorted(set(index["weight_map"].values()))
    n = len(shards)
    assert n >= 3
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert index["metadata"]["total_size"] == total
    assert set(index["weight_map"]) == set(sd)
    assert not (tmp_path / SAFE_WEIGHTS_NAME).exists()
    for shard in shards:  # every shard is a plain safetensors file holding what the index says
        in_file = load_file(tmp_path / shard)
        assert set(in_file) == {k for k, f in index["weight_map"].items() if f == shard}
        assert _nbytes(in_file) <= total // 4 or len(in_file) == 1
    _assert_same(sd, load_state_dict_from_dir(tmp_path))


def test_oversized_tensor_gets_its_own_shard(tmp_path: Path, gen: torch.Generator) -> None:
    sd = {
        "a": torch.randn(4, generator=gen),
        "big": torch.randn(64, generator=gen),
        "c": torch.randn(4, generator=gen),
    }
    save_checkpoint(sd, tmp_path, max_shard_size=40)
    wm = json.loads((tmp_path / SAFE_INDEX_NAME).read_text())["weight_map"]
    assert len({wm["a"], wm["big"], wm["c"]}) == 3
    _assert_same(sd, load_state_dict_from_dir(tmp_path))


def test_resave_removes_stale_shards(toy: Toy, tmp_path: Path) -> None:
    sd = toy.state_dict()
    save_checkpoint(sd, tmp_path, max_shard_size=_nbytes(sd) // 4)
    (tmp_path / "notes.txt").write_text("keep me")
    save_checkpoint(sd, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SAFE_WEIGHTS_NAME, "notes.txt"]
    _assert_same(sd, load_state_dict_from_dir(tmp_path))


@pytest.mark.parametrize("max_shard_size", [100, "1GB"])  # aliases in other shards / the same one
def test_shared_and_noncontiguous_tensors(
    tmp_path: Path, gen: torch.Generator, max_shard_size: int | str
) -> None:
    base = torch.randn(6, 4, generator=gen)
    fused = torch.randn(12, 4, generator=gen)
    sd = {
        "tied.a": base,
        "tied.b": base,  # same tensor under two names
        "transposed": base.t(),  # non-contiguous view of the same storage
        "q": fused[:4],  # views into one fused buffer
        "kv": fused[4:],
        "strided": fused[::3],
    }
    save_checkpoint(sd, tmp_path, max_shard_size=max_shard_size)
    loaded = load_state_dict_from_dir(tmp_path)
    _assert_same({k: v.contiguous() for k, v in sd.items()}, loaded)
    assert loaded["tied.a"].data_ptr() != loaded["tied.b"].data_ptr()


def test_reading_is_one_shard_at_a_time(
    toy: Toy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sd = toy.state_dict()
    save_checkpoint(sd, tmp_path, max_shard_size=_nbytes(sd) // 4)
    open_now, peak, data_opens = [0], [0], []
    real = W.safe_open

    @contextlib.contextmanager
    def counting(path: str, framework: str, device: str = "cpu"):  # type: ignore[no-untyped-def]
        open_now[0] += 1
        peak[0] = max(peak[0], open_now[0])
        try:
            with real(path, framework=framework, device=device) as f:
                yield f
        finally:
            open_now[0] -= 1
        data_opens.append(Path(path).name)

    monkeypatch.setattr(W, "safe_open", counting)
    load_state_dict_from_dir(tmp_path)
    n = len(set(json.loads((tmp_path / SAFE_INDEX_NAME).read_text())["weight_map"].values()))
    assert peak[0] == 1
    assert len(data_opens) == 2 * n  # one header pass and one data pass per shard


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5GB", 5 * 10**9), ("200MB", 200 * 10**6), ("1GiB", 2**30), ("512", 512), (" 2 kb ", 2000)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected
    assert parse_size(expected) == expected


@pytest.mark.parametrize("bad", ["5 GBs", "", "-1MB", "0", 0, 1.5, True])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        parse_size(bad)  # type: ignore[arg-type]


def test_save_rejects_meta_tensors(tmp_path: Path) -> None:
    with torch.device("meta"):
        m = Toy()
    with pytest.raises(CheckpointError, match="meta device"):
        save_checkpoint(m, tmp_path)


# ----------------------------------------------------------------------------------------------
# directory errors


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as e:
        load_state_dict_from_dir(missing)
    assert str(missing) in str(e.value)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("x")
    with pytest.raises(CheckpointError, match=r"no model\.safetensors") as e:
        load_state_dict_from_dir(tmp_path)
    assert str(tmp_path) in str(e.value) and "README.md" in str(e.value)


def test_pickle_checkpoint_refused(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="pickle") as e:
        load_state_dict_from_dir(tmp_path)
    assert "pytorch_model.bin" in str(e.value) and "arbitrary code" in str(e.value)


def test_index_names_missing_shard(toy: Toy, tmp_path: Path) -> None:
    sd = toy.state_dict()
    save_checkpoint(sd, tmp_path, max_shard_size=_nbytes(sd) // 4)
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(CheckpointNotFoundError, match="missing") as e:
        load_state_dict_from_dir(tmp_path)
    assert victim.name in str(e.value) and str(tmp_path) in str(e.value)


def test_index_key_absent_from_shard(toy: Toy, tmp_path: Path) -> None:
    sd = toy.state_dict()
    save_checkpoint(sd, tmp_path, max_shard_size=_nbytes(sd) // 4)
    index_file = tmp_path / SAFE_INDEX_NAME
    index = json.loads(index_file.read_text())
    index["weight_map"]["model.ghost.weight"] = sorted(set(index["weight_map"].values()))[0]
    index_file.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="absent from that shard") as e:
        load_state_dict_from_dir(tmp_path)
    assert "model.ghost.weight" in str(e.value)


def test_duplicate_key_across_shards(tmp_path: Path, gen: torch.Generator) -> None:
    a, b = torch.randn(3, generator=gen), torch.randn(3, generator=gen)
    save_file({"x": a, "dup": a.clone()}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"y": b, "dup": b.clone()}, tmp_path / "model-00002-of-00002.safetensors")
    wm = {"x": "model-00001-of-00002.safetensors", "y": "model-00002-of-00002.safetensors"}
    wm["dup"] = "model-00001-of-00002.safetensors"
    (tmp_path / SAFE_INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    with pytest.raises(CheckpointError, match="more than one shard") as e:
        load_state_dict_from_dir(tmp_path)
    assert "dup in model-00001-of-00002.safetensors, model-00002-of-00002.safetensors" in str(
        e.value
    )


def test_duplicate_key_in_index_json(tmp_path: Path, gen: torch.Generator) -> None:
    save_file({"x": torch.randn(2, generator=gen)}, tmp_path / "model-00001-of-00001.safetensors")
    s = '{"weight_map": {"x": "model-00001-of-00001.safetensors", "x": "other.safetensors"}}'
    (tmp_path / SAFE_INDEX_NAME).write_text(s)
    with pytest.raises(CheckpointError, match="more than once"):
        load_state_dict_from_dir(tmp_path)


def test_both_layouts_is_ambiguous(toy: Toy, tmp_path: Path) -> None:
    sd = toy.state_dict()
    save_checkpoint(sd, tmp_path, max_shard_size=_nbytes(sd) // 4)
    save_file({"x": torch.ones(1)}, tmp_path / SAFE_WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match="both"):
        load_state_dict_from_dir(tmp_path)


def test_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / SAFE_WEIGHTS_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_state_dict_from_dir(tmp_path)


# ----------------------------------------------------------------------------------------------
# load_checkpoint: validation, ignore patterns, dtype, meta


def test_load_into_fresh_model(toy: Toy, tmp_path: Path, gen: torch.Generator) -> None:
    save_checkpoint(toy, tmp_path, max_shard_size=_nbytes(toy.state_dict()) // 3)
    other = _randomize_(Toy(), gen)
    report = load_checkpoint(other, tmp_path)
    _assert_same(toy.state_dict(), other.state_dict())
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    assert torch.equal(toy(ids), other(ids))
    assert len(report.loaded) == len(toy.state_dict()) and not report.missing
    assert report.nbytes == _nbytes(toy.state_dict())
    assert report.dtypes["bfloat16"] > 0 and report.dtypes["int64"] == 1
    assert "loaded" in str(report)


def test_all_mismatches_in_one_error_and_model_untouched(
    toy: Toy, tmp_path: Path, gen: torch.Generator
) -> None:
    sd = dict(toy.state_dict())
    del sd["model.layers.0.norm.weight"]  # missing
    del sd["lm_head.weight"]  # missing
    sd["model.layers.0.self_attn.vision_expert_dense.weight"] = torch.randn(8, 8, generator=gen)
    sd["extra.bias"] = torch.randn(3, generator=gen)  # unexpected
    sd["model.embed_tokens.weight"] = torch.randn(12, 8, generator=gen)  # mis-shaped (11, 8)
    save_checkpoint(sd, tmp_path, max_shard_size=_nbytes(sd) // 3)
    target = _randomize_(Toy(), gen)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(target, tmp_path)
    msg = str(e.value)
    assert "2 missing" in msg and "model.layers.0.norm.weight [8]" in msg
    assert "lm_head.weight [11, 8]" in msg
    assert "2 unexpected" in msg and "extra.bias [3]" in msg
    assert "vision_expert_dense" in msg
    assert "model.embed_tokens.weight: model expects [11, 8], checkpoint has [12, 8]" in msg
    assert str(tmp_path) in msg
    assert set(e.value.missing) == {"model.layers.0.norm.weight", "lm_head.weight"}
    assert e.value.mismatched == (("model.embed_tokens.weight", (11, 8), (12, 8)),)
    _assert_same(before, target.state_dict())  # validated before anything was copied


def test_long_lists_are_truncated(toy: Toy, tmp_path: Path) -> None:
    sd = dict(toy.state_dict())
    sd.update({f"junk.{i:03d}": torch.full((1,), float(i + 1)) for i in range(50)})
    save_checkpoint(sd, tmp_path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(Toy(), tmp_path)
    msg = str(e.value)
    assert "50 unexpected" in msg and "... and 30 more" in msg
    assert "junk.019" in msg and "junk.020" not in msg
    assert len(e.value.unexpected) == 50


def test_non_strict_reports_and_keeps_the_rest(
    toy: Toy, tmp_path: Path, gen: torch.Generator
) -> None:
    sd = dict(toy.state_dict())
    del sd["lm_head.weight"]
    sd["extra.bias"] = torch.randn(3, generator=gen)
    save_checkpoint(sd, tmp_path)
    target = _randomize_(Toy(), gen)
    head = target.lm_head.weight.detach().clone()
    report = load_checkpoint(target, tmp_path, strict=False)
    assert report.missing == ("lm_head.weight",) and report.unexpected == ("extra.bias",)
    assert torch.equal(target.lm_head.weight, head)
    assert torch.equal(target.model.embed_tokens.weight, toy.model.embed_tokens.weight)
    sd["model.embed_tokens.weight"] = torch.randn(12, 8, generator=gen)
    save_checkpoint(sd, tmp_path)
    with pytest.raises(CheckpointError, match="different shape"):  # never tolerated
        load_checkpoint(target, tmp_path, strict=False)


def test_ignored_keys(toy: Toy, tmp_path: Path, gen: torch.Generator) -> None:
    sd = dict(toy.state_dict())
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.randn(4, generator=gen)
    save_checkpoint(sd, tmp_path)
    target = _randomize_(Toy(), gen)
    report = load_checkpoint(target, tmp_path)
    assert report.ignored == ("model.layers.0.self_attn.rotary_emb.inv_freq",)
    assert "*.rotary_emb.inv_freq" in KNOWN_IGNORED
    _assert_same(toy.state_dict(), target.state_dict())
    with pytest.raises(CheckpointError, match="1 unexpected"):
        load_checkpoint(target, tmp_path, ignore=())
    # A model-side name matched by a pattern is not required either, and keeps its value.
    del sd["lm_head.weight"]
    save_checkpoint(sd, tmp_path)
    report = load_checkpoint(target, tmp_path, ignore=(*KNOWN_IGNORED, "lm_head.*"))
    assert set(report.ignored) == {"model.layers.0.self_attn.rotary_emb.inv_freq", "lm_head.weight"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dtype_cast(toy: Toy, tmp_path: Path, dtype: torch.dtype) -> None:
    save_checkpoint(toy, tmp_path)
    sd = toy.state_dict()
    loaded = load_state_dict_from_dir(tmp_path, dtype=dtype)
    target = Toy()
    load_checkpoint(target, tmp_path, dtype=dtype)
    for got in (loaded, target.state_dict()):
        for k, v in sd.items():
            want = v.to(dtype) if v.is_floating_point() else v  # ints and bools keep theirs
            assert got[k].dtype == want.dtype, k
            assert torch.equal(got[k], want), k


def test_without_dtype_the_checkpoint_dtype_is_kept(toy: Toy, tmp_path: Path) -> None:
    save_checkpoint(toy, tmp_path)
    target = Toy(n=3).to(torch.float64)
    load_checkpoint(target, tmp_path)
    _assert_same(toy.state_dict(), target.state_dict())


@pytest.mark.parametrize("how", ["parameters_on_meta", "torch.device"])
def test_meta_device_load(toy: Toy, tmp_path: Path, gen: torch.Generator, how: str) -> None:
    save_checkpoint(toy, tmp_path, max_shard_size=_nbytes(toy.state_dict()) // 3)
    ctx = parameters_on_meta() if how == "parameters_on_meta" else torch.device("meta")
    with ctx:
        target = Toy()
    assert all(p.is_meta for p in target.parameters())
    if how == "torch.device":  # non-persistent buffers would stay on meta: refused, named
        with pytest.raises(CheckpointError, match="meta device") as e:
            load_checkpoint(target, tmp_path)
        assert "model.layers.0.inv_freq" in str(e.value)
        return
    assert not target.model.layers[0].inv_freq.is_meta
    load_checkpoint(target, tmp_path)
    assert not any(t.is_meta for t in [*target.parameters(), *target.buffers()])
    _assert_same(toy.state_dict(), target.state_dict())
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    assert torch.equal(toy(ids), target(ids))
    assert torch.equal(target.model.layers[0].inv_freq, toy.model.layers[0].inv_freq)


def test_meta_model_missing_keys_refused_even_non_strict(toy: Toy, tmp_path: Path) -> None:
    sd = dict(toy.state_dict())
    del sd["lm_head.weight"]
    save_checkpoint(sd, tmp_path)
    with parameters_on_meta():
        target = Toy()
    with pytest.raises(CheckpointError, match=r"meta device[^\n]*\n\s+lm_head.weight"):
        load_checkpoint(target, tmp_path, strict=False)


def test_parameters_on_meta_restores_module() -> None:
    with parameters_on_meta():
        pass
    assert not nn.Linear(2, 2).weight.is_meta
    with pytest.raises(RuntimeError), parameters_on_meta():
        raise RuntimeError
    assert not nn.Linear(2, 2).weight.is_meta


# ----------------------------------------------------------------------------------------------
# config.json <-> CogVLM2Config


# The fields of the released cogvlm2-video-llama3-chat config.json, as published (no rope_theta,
# no head_dim, no vision-expert flag: the modeling code fixes or derives those).
RELEASE_VIDEO_CHAT = {
    "architectures": ["CogVLMVideoForCausalLM"],
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "pad_token_id": 128002,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 2048,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_multi_query_heads": 8,
    "rms_norm_eps": 1e-05,
    "template_version": "chat",
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vision_config": {
        "dropout_prob": 0.0,
        "hidden_act": "gelu",
        "hidden_size": 1792,
        "image_size": 224,
        "in_channels": 3,
        "intermediate_size": 15360,
        "layer_norm_eps": 1e-06,
        "num_heads": 16,
        "num_hidden_layers": 63,
        "num_positions": 257,
        "patch_size": 14,
    },
    "vocab_size": 128256,
}
VIDEO_NAMES = [
    "model.layers.0.self_attn.language_expert_query_key_value.weight",
    "model.layers.0.mlp.language_mlp.gate_proj.weight",
]
IMAGE_NAMES = [
    *VIDEO_NAMES,
    "model.layers.0.self_attn.vision_expert_query_key_value.weight",
    "model.layers.0.mlp.vision_mlp.gate_proj.weight",
]


@pytest.mark.parametrize("size", ["tiny", "small", "full"])
@pytest.mark.parametrize("variant", ["video-chat", "video-base", "image"])
def test_config_roundtrip(size: str, variant: str) -> None:
    cfg = config_mod.get_config(size, variant)
    hf = W.config_to_hf(cfg)
    hf = json.loads(json.dumps(hf))  # what config.json holds
    assert W.config_from_hf(hf) == cfg
    assert hf["num_multi_query_heads"] == cfg.text.num_kv_heads
    assert hf["num_hidden_layers"] == cfg.text.num_layers
    assert hf["vision_config"]["num_hidden_layers"] == cfg.vision.num_layers
    assert hf["vision_config"]["num_positions"] == cfg.vision.num_positions
    assert hf["template_version"] == cfg.template
    # Without our extension block, the release's own fields still give the same model shape.
    bare = {k: v for k, v in hf.items() if k != W.EXTENSION_KEY}
    names = IMAGE_NAMES if cfg.vision_expert else VIDEO_NAMES
    again = W.config_from_hf(bare, weight_names=names)
    assert dataclasses.replace(again, name=cfg.name) == cfg  # presets: adapter GLU = LM MLP size


def test_config_from_release_video_chat() -> None:
    cfg = W.config_from_hf(RELEASE_VIDEO_CHAT, weight_names=VIDEO_NAMES)
    want = config_mod.get_config("full", "video-chat")
    assert dataclasses.replace(cfg, name=want.name) == want
    assert cfg.text.rope_theta == 500000.0 and cfg.text.head_dim == 128  # release implies these


def test_config_from_release_image() -> None:
    hf = json.loads(json.dumps(RELEASE_VIDEO_CHAT))
    hf["architectures"] = ["CogVLMForCausalLM"]
    hf["eos_token_id"] = [128001, 128009]
    hf["max_position_embeddings"] = 8192
    hf["vision_config"].update(image_size=1344, num_positions=9217)
    cfg = W.config_from_hf(hf, weight_names=IMAGE_NAMES)
    want = config_mod.get_config("full", "image", vision={"image_size": 1344})
    assert dataclasses.replace(cfg, name=want.name) == want
    assert cfg.eos_token_ids == (128001, 128009)  # both stop generation


def test_vision_expert_inference_order() -> None:
    hf = dict(RELEASE_VIDEO_CHAT)
    # weight names win over the architectures name; the architectures name is the last resort
    assert W.config_from_hf(hf, weight_names=IMAGE_NAMES).vision_expert is True
    assert W.config_from_hf(hf, weight_names=VIDEO_NAMES).vision_expert is False
    assert W.config_from_hf(hf).vision_expert is False
    hf["architectures"] = ["CogVLMForCausalLM"]
    assert W.config_from_hf(hf).vision_expert is True
    del hf["architectures"]
    with pytest.raises(ValueError, match="visual expert"):
        W.config_from_hf(hf)
    hf[W.EXTENSION_KEY] = {"vision_expert": True}  # an explicit flag wins over everything
    assert W.config_from_hf(hf, weight_names=VIDEO_NAMES).vision_expert is True


def test_config_from_hf_rejects_inconsistent() -> None:
    hf = json.loads(json.dumps(RELEASE_VIDEO_CHAT))
    hf["vision_config"]["num_positions"] = 256
    with pytest.raises(ValueError, match="num_positions"):
        W.config_from_hf(hf, weight_names=VIDEO_NAMES)
    hf = json.loads(json.dumps(RELEASE_VIDEO_CHAT))
    hf["hidden_act"] = "gelu"
    with pytest.raises(ValueError, match="hidden_act"):
        W.config_from_hf(hf, weight_names=VIDEO_NAMES)
    hf = json.loads(json.dumps(RELEASE_VIDEO_CHAT))
    del hf["vision_config"]
    with pytest.raises(ValueError, match="vision_config"):
        W.config_from_hf(hf, weight_names=VIDEO_NAMES)


def test_save_writes_config_json(toy: Toy, tmp_path: Path) -> None:
    cfg = config_mod.get_config("tiny", "image")
    written = save_checkpoint(toy, tmp_path, config=cfg)
    assert tmp_path / "config.json" in written
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["torch_dtype"] == "float32"  # the dtype holding most bytes in the toy
    assert W.config_from_hf(hf) == cfg


# ----------------------------------------------------------------------------------------------
# the real tiny model


def _release_layout(cfg) -> dict[str, tuple[int, ...]]:  # type: ignore[no-untyped-def]
    """Tensor names and shapes of a CogVLM2 checkpoint, written out from the release's layout
    (independently of reference.py, so that a renamed module there fails here)."""
    v, t = cfg.vision, cfg.text
    dv, dt, a = v.hidden_size, t.hidden_size, cfg.adapter_intermediate_size
    qkv, q = t.num_heads * t.head_dim + 2 * t.num_kv_heads * t.head_dim, t.num_heads * t.head_dim
    pe, vl, glu = "model.vision.patch_embedding", "model.vision.transformer.layers", "model.vision"
    out: dict[str, tuple[int, ...]] = {
        f"{pe}.proj.weight": (dv, v.in_channels, v.patch_size, v.patch_size),
        f"{pe}.proj.bias": (dv,),
        f"{pe}.cls_embedding": (1, dv),
        f"{pe}.position_embedding.weight": ((v.image_size // v.patch_size) ** 2 + 1, dv),
        f"{glu}.conv.weight": (dv, dv, 2, 2),
        f"{glu}.conv.bias": (dv,),
        f"{glu}.linear_proj.linear_proj.weight": (dt, dv),
        f"{glu}.linear_proj.norm1.weight": (dt,),
        f"{glu}.linear_proj.norm1.bias": (dt,),
        f"{glu}.linear_proj.gate_proj.weight": (a, dt),
        f"{glu}.linear_proj.dense_h_to_4h.weight": (a, dt),
        f"{glu}.linear_proj.dense_4h_to_h.weight": (dt, a),
        f"{glu}.boi": (1, 1, dt),
        f"{glu}.eoi": (1, 1, dt),
        "model.embed_tokens.weight": (t.vocab_size, dt),
        "model.norm.weight": (dt,),
        "lm_head.weight": (t.vocab_size, dt),
    }
    for i in range(v.num_layers):
        p = f"{vl}.{i}"
        for norm in ("input_layernorm", "post_attention_layernorm"):
            out[f"{p}.{norm}.weight"] = out[f"{p}.{norm}.bias"] = (dv,)
        out[f"{p}.attention.query_key_value.weight"] = (3 * dv, dv)
        out[f"{p}.attention.query_key_value.bias"] = (3 * dv,)
        out[f"{p}.attention.dense.weight"] = (dv, dv)
        out[f"{p}.attention.dense.bias"] = (dv,)
        out[f"{p}.mlp.fc1.weight"], out[f"{p}.mlp.fc1.bias"] = (
            (v.intermediate_size, dv),
            (v.intermediate_size,),
        )
        out[f"{p}.mlp.fc2.weight"], out[f"{p}.mlp.fc2.bias"] = (dv, v.intermediate_size), (dv,)
    experts = ("language", "vision") if cfg.vision_expert else ("language",)
    for i in range(t.num_layers):
        p = f"model.layers.{i}"
        out[f"{p}.input_layernorm.weight"] = out[f"{p}.post_attention_layernorm.weight"] = (dt,)
        for e in experts:
            out[f"{p}.self_attn.{e}_expert_query_key_value.weight"] = (qkv, dt)
            out[f"{p}.self_attn.{e}_expert_dense.weight"] = (dt, q)
            out[f"{p}.mlp.{e}_mlp.gate_proj.weight"] = (t.intermediate_size, dt)
            out[f"{p}.mlp.{e}_mlp.up_proj.weight"] = (t.intermediate_size, dt)
            out[f"{p}.mlp.{e}_mlp.down_proj.weight"] = (dt, t.intermediate_size)
        if cfg.vision_expert:
            out[f"{p}.self_attn.vision_expert_query_key_value.bias"] = (qkv,)
    return out


def _prompt(cfg, gen: torch.Generator, frames: int = 2):  # type: ignore[no-untyped-def]
    """[bos] + per frame (vision slots + one text token) + a few text tokens; random pixels."""
    tpf, vocab = cfg.tokens_per_frame, cfg.text.vocab_size
    ids, types = [cfg.bos_token_id], [0]
    for _ in range(frames):
        ids += [cfg.pad_token_id] * tpf + [int(torch.randint(0, vocab, (1,), generator=gen))]
        types += [1] * tpf + [0]
    ids += torch.randint(0, vocab, (5,), generator=gen).tolist()
    types += [0] * 5
    v = cfg.vision
    images = torch.randn(frames, v.in_channels, v.image_size, v.image_size, generator=gen)
    return torch.tensor([ids]), torch.tensor([types]), images


@pytest.mark.parametrize("variant", ["video-chat", "image"])
def test_reference_state_dict_uses_release_names(variant: str) -> None:
    ref = reference
    cfg = config_mod.get_config("tiny", variant)
    with parameters_on_meta():
        model = ref.CogVLM2ForCausalLM(cfg)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = _release_layout(cfg)
    assert sorted(set(got) ^ set(want)) == []
    assert {k: s for k, s in got.items() if want[k] != s} == {}


@pytest.mark.parametrize("variant", ["video-chat", "image"])
def test_release_named_checkpoint_loads_into_tiny_reference(
    variant: str, tmp_path: Path, gen: torch.Generator
) -> None:
    """A checkpoint written by hand in the release's layout and names (sharded, bare release
    config.json with no vision-expert flag) loads with load_pretrained and gives the logits of
    the same tensors loaded by torch's own load_state_dict."""
    ref = reference
    cfg = config_mod.get_config("tiny", variant)
    sd = {k: torch.randn(s, generator=gen) * 0.05 for k, s in _release_layout(cfg).items()}
    names = sorted(sd)
    shards = [names[i::3] for i in range(3)]  # interleaved, as if written by another tool
    wm = {}
    for i, part in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-00003.safetensors"
        save_file({k: sd[k].to(torch.bfloat16) for k in part}, tmp_path / fname, {"format": "pt"})
        wm.update(dict.fromkeys(part, fname))
    index = {"metadata": {"total_size": 2 * sum(t.numel() for t in sd.values())}, "weight_map": wm}
    (tmp_path / SAFE_INDEX_NAME).write_text(json.dumps(index))
    hf = {
        k: v for k, v in W.config_to_hf(cfg).items() if k not in (W.EXTENSION_KEY, "architectures")
    }
    (tmp_path / "config.json").write_text(json.dumps(hf))  # vision expert: from weight names

    loaded = load_pretrained_checked(tmp_path, cfg, dtype=None)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    oracle = ref.CogVLM2ForCausalLM(cfg).to(torch.bfloat16)
    oracle.load_state_dict({k: t.to(torch.bfloat16) for k, t in sd.items()})
    ids, types, images = _prompt(cfg, gen)
    with torch.no_grad():
        want = oracle(ids, types, images.to(torch.bfloat16)).logits
        got = loaded(ids, types, images.to(torch.bfloat16)).logits
    assert torch.isfinite(want).all() and want.abs().max() > 0
    assert torch.equal(got, want)


def load_pretrained_checked(path: Path, cfg, **kw):  # type: ignore[no-untyped-def]
    model = W.load_pretrained(path, **kw)
    assert dataclasses.replace(model.config, name=cfg.name) == cfg
    assert not model.training
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return model


@pytest.mark.parametrize(
    ("variant", "dtype"), [("video-chat", torch.float32), ("image", torch.bfloat16)]
)
def test_saved_reference_reloads_with_identical_logits(
    variant: str, dtype: torch.dtype, tmp_path: Path, seed: int, gen: torch.Generator
) -> None:
    ref = reference
    cfg = config_mod.get_config("tiny", variant)
    model = ref.init_random_weights(ref.CogVLM2ForCausalLM(cfg), seed).eval()
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    save_checkpoint(model, tmp_path, max_shard_size=total // 4, config=cfg)
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) >= 4
    loaded = load_pretrained_checked(tmp_path, cfg, dtype=dtype)
    assert loaded.config == cfg
    model = model.to(dtype)
    ids, types, images = _prompt(cfg, gen)
    with torch.no_grad():
        want = model(ids, types, images.to(dtype)).logits
        got = loaded(ids, types, images.to(dtype)).logits
    assert torch.isfinite(want).all() and want.abs().max() > 0
    assert torch.equal(got, want)


def test_video_checkpoint_into_image_model_names_the_cause(tmp_path: Path, seed: int) -> None:
    ref = reference
    video = ref.init_random_weights(ref.CogVLM2ForCausalLM(config_mod.get_config("tiny")), seed)
    save_checkpoint(video, tmp_path)
    with parameters_on_meta():
        image = ref.CogVLM2ForCausalLM(config_mod.get_config("tiny", "image"))
    with pytest.raises(CheckpointError, match="vision_expert=False") as e:
        load_checkpoint(image, tmp_path)
    assert "model.layers.0.self_attn.vision_expert_query_key_value.bias" in str(e.value)


def test_load_pretrained_needs_config_json(tmp_path: Path, seed: int) -> None:
    ref = reference
    cfg = config_mod.get_config("tiny")
    save_checkpoint(ref.init_random_weights(ref.CogVLM2ForCausalLM(cfg), seed), tmp_path)
    with pytest.raises(CheckpointNotFoundError, match=r"config\.json"):
        W.load_pretrained(tmp_path)
    model = W.load_pretrained(tmp_path, config=cfg, dtype=None)
    assert model.config == cfg


@pytest.mark.gpu
def test_load_pretrained_onto_cuda(tmp_path: Path, seed: int, gen: torch.Generator) -> None:
    ref = reference
    cfg = config_mod.get_config("tiny", "image")
    model = ref.init_random_weights(ref.CogVLM2ForCausalLM(cfg), seed).eval()
    save_checkpoint(model, tmp_path, config=cfg)
    loaded = W.load_pretrained(tmp_path, device="cuda")  # default dtype: bfloat16
    assert all(t.is_cuda for t in [*loaded.parameters(), *loaded.buffers()])
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    model = model.to(device="cuda", dtype=torch.bfloat16)
    ids, types, images = _prompt(cfg, gen)
    ids, types, images = ids.cuda(), types.cuda(), images.to("cuda", torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(loaded(ids, types, images).logits, model(ids, types, images).logits)
