"""FastCogVLM2 (models/cogvlm2/fast_model.py) against the reference model from one state dict.

CPU: tiny config, fp32, uint8 frames in. Logits follow the parity rule (fast fp32 and reference
fp32 against the reference in fp64); greedy tokens equal; ``generate`` (static cache) equals
`greedy_generate` on the reference; pruning equals the reference run with the same keep masks;
checkpoint loading and bad input. GPU (marked): bf16 small config, CUDA-graph decode, memory.
"""

from __future__ import annotations

import copy

import pytest
import torch

from haic_kernels import backends
from haic_kernels.models.cogvlm2 import (
    ByteTokenizer,
    CogVLM2ForCausalLM,
    FastCogVLM2,
    build_prompt,
    get_config,
    greedy_generate,
    init_random_weights,
    normalize_frames,
    stack_prompts,
    swap_fast_modules,
)
from haic_kernels.models.cogvlm2.save import save_checkpoint
from haic_kernels.models.cogvlm2.weights import CheckpointError
from haic_kernels.pruning import Compose, Salient, Temporal, TextGuided, pool_cls_attention
from haic_kernels.pruning.reference_scores import (
    lm_key_scores_reference,
    vision_cls_scores_reference,
)
from haic_kernels.testing import assert_parity

HAS_CUDA = torch.cuda.is_available()
QUERIES = [("what is here?", "why?"), ("describe it", "and then")]


def _model(variant: str, seed: int, size: str = "tiny", **over) -> CogVLM2ForCausalLM:
    ref = CogVLM2ForCausalLM(get_config(size, variant, **over))
    return init_random_weights(ref, seed % 10_000).eval()


def _batch(cfg, queries, frames: int = 2, device: str = "cpu"):
    tok = ByteTokenizer()
    ids, types = stack_prompts([build_prompt(tok, q, frames, cfg) for q in queries])
    s = cfg.vision.image_size
    u8 = torch.randint(0, 256, (len(queries) * frames, s, s, 3), dtype=torch.uint8)
    return ids.to(device), types.to(device), u8.to(device)


def _pad_queries(queries):
    # stack_prompts needs equal lengths: pad the shorter texts with spaces.
    n = max(len(q) for q in queries)
    return [q.ljust(n) for q in queries]


@torch.no_grad()
def _ref_greedy(model, steps: int, **prefill) -> torch.Tensor:
    out = model(**prefill, use_cache=True)
    toks = []
    b = prefill["input_ids"].shape[0]
    for i in range(steps):
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        toks.append(nxt)
        if i + 1 < steps:
            new_type = torch.zeros(b, 1, dtype=torch.long, device=nxt.device)
            out = model(nxt, new_type, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(toks, 1)


def test_state_dict_keys_and_shared_parameters(seed) -> None:
    ref = _model("image", seed)
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    assert list(fast.state_dict()) == list(ref.state_dict())
    ref_ptrs = {n: p.data_ptr() for n, p in ref.named_parameters()}
    assert {n: p.data_ptr() for n, p in fast.named_parameters()} == ref_ptrs
    names = {n for n, _ in fast.named_modules()}
    assert {"model.vision.transformer.layers.1.attention", "model.layers.0.mlp"} <= names
    built = FastCogVLM2(get_config("tiny", "video-chat"), backend="torch")
    assert list(built.state_dict()) == list(_model("video-chat", seed).state_dict())


@pytest.mark.parametrize("variant", ["video-chat", "video-base", "image"])
@torch.no_grad()
def test_logits_parity_and_greedy_tokens(seed, variant) -> None:
    ref = _model(variant, seed)
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    ref64 = copy.deepcopy(ref).double()
    for queries in QUERIES:
        ids, types, u8 = _batch(ref.config, _pad_queries(queries))
        images = normalize_frames(u8)
        got = fast(ids, types, u8).logits
        want32 = ref(ids, types, images).logits
        want64 = ref64(ids, types, images.double()).logits
        assert_parity(got, want32, want64, what=f"{variant} logits")
        # float normalized frames go in too (what the reference takes)
        assert_parity(fast(ids, types, images).logits, want32, want64, what="float frames")
        a = greedy_generate(ref, ids, types, images, max_new_tokens=4)
        b = greedy_generate(fast, ids, types, u8, max_new_tokens=4)
        assert torch.equal(a, b)


@pytest.mark.skipif(
    HAS_CUDA or not backends.triton().usable, reason="Triton interpreter run (CPU only)"
)
@torch.no_grad()
def test_triton_interpreter_forward(seed) -> None:
    ref = _model("image", seed, text={"num_layers": 1}, vision={"num_layers": 1})
    fast = FastCogVLM2.from_reference(ref, backend="triton")
    ids, types, u8 = _batch(ref.config, ["hi?"], frames=1)
    images = normalize_frames(u8)
    got = fast(ids, types, u8).logits
    want32 = ref(ids, types, images).logits
    want64 = copy.deepcopy(ref).double()(ids, types, images.double()).logits
    assert_parity(got, want32, want64, what="triton logits")


@pytest.mark.parametrize("variant", ["video-chat", "image"])
def test_generate_static_cache_equals_greedy_generate(seed, variant) -> None:
    ref = _model(variant, seed)
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    ids, types, u8 = _batch(ref.config, _pad_queries(QUERIES[0]))
    images = normalize_frames(u8)
    want = greedy_generate(ref, ids, types, images, max_new_tokens=6)
    timings: dict = {}
    got = fast.generate(ids, types, u8, max_new_tokens=6, timings=timings)
    assert torch.equal(got, want)
    assert timings["decode_tokens"] == 5 * ids.shape[0] and timings["prefill_s"] > 0
    # eos: row 0 stops at its 2nd token, the batch when both rows have produced it
    eos = int(want[0, 1])
    want_eos = greedy_generate(ref, ids, types, images, max_new_tokens=6, eos_token_id=eos)
    got_eos = fast.generate(ids, types, u8, max_new_tokens=6, eos_token_id=eos)
    assert torch.equal(got_eos, want_eos)
    assert fast.generate(ids, types, u8, max_new_tokens=0).shape == (ids.shape[0], 0)


def test_checkpoint_roundtrip_and_bad_checkpoints(seed, tmp_path) -> None:
    ref = _model("image", seed)
    save_checkpoint(ref, tmp_path / "ok", config=ref.config)
    fast = FastCogVLM2.from_pretrained(
        tmp_path / "ok", dtype=torch.float32, device="cpu", backend="torch"
    )
    ids, types, u8 = _batch(ref.config, ["what?"], frames=1)
    with torch.no_grad():
        torch.testing.assert_close(
            fast(ids, types, u8).logits, ref(ids, types, normalize_frames(u8)).logits
        )
    sd = ref.state_dict()
    missing = {k: v for k, v in sd.items() if k != "model.layers.1.mlp.language_mlp.up_proj.weight"}
    save_checkpoint(missing, tmp_path / "missing", config=ref.config)
    with pytest.raises(CheckpointError, match="up_proj"):
        FastCogVLM2.from_pretrained(tmp_path / "missing", dtype=torch.float32, device="cpu")
    bad = dict(sd)
    bad["model.vision.conv.weight"] = bad["model.vision.conv.weight"][:, :, :1].contiguous()
    save_checkpoint(bad, tmp_path / "shape", config=ref.config)
    with pytest.raises(CheckpointError, match=r"conv\.weight"):
        FastCogVLM2.from_pretrained(tmp_path / "shape", dtype=torch.float32, device="cpu")


@torch.no_grad()
def test_bad_input_clear_errors(seed) -> None:
    ref = _model("video-chat", seed, text={"max_position_embeddings": 24})
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    cfg = ref.config
    ids, types, u8 = _batch(cfg, ["a?"], frames=1)  # positions fit in 24
    with pytest.raises(ValueError, match="frames"):
        fast(ids, types, u8[:0])
    with pytest.raises(ValueError, match="frames"):
        fast(ids, types, u8.permute(0, 3, 1, 2))  # uint8 but channels first
    with pytest.raises(ValueError, match="vision slots"):
        fast(ids, types)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        fast.generate(ids, types, u8, max_new_tokens=30)
    long_ids, long_types, long_u8 = _batch(cfg, ["a much longer question here?"], frames=1)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        fast(long_ids, long_types, long_u8)
    with pytest.raises(ValueError, match="max_new_tokens"):
        fast.generate(ids, types, u8, max_new_tokens=-1)
    with pytest.raises(TypeError, match="prune"):
        fast(ids, types, u8, prune="half")
    with pytest.raises(ValueError, match="backend"):
        FastCogVLM2.from_reference(ref, backend="cudnn")


def _is_float(v: object) -> bool:
    return isinstance(v, torch.Tensor) and v.is_floating_point()


def _reference_with_plan(ref, plan, ids, types, embeds):
    """The reference run with the fast model's keep masks: (kwargs of the prefill call)."""
    kwargs = dict(input_ids=ids, token_type_ids=types, vision_embeds=embeds)
    stages = list(plan.stages)
    if stages[0].keep_from_layer == 0:
        first = stages.pop(0)
        kwargs = first.model_inputs(ids, types, vision_embeds=embeds)
    if stages:
        (lm,) = stages
        kwargs.update(keep=lm.keep, keep_from_layer=lm.keep_from_layer)
    return kwargs


@pytest.mark.parametrize(
    "variant, policy",
    [
        ("video-chat", Temporal(keep_ratio=0.4, per="frame")),
        ("image", Salient(keep_ratio=0.5)),
        ("video-base", Salient(keep_ratio=0.5, per="video", merge=True)),
        ("image", TextGuided(keep_ratio=0.3, layer=0, query="text")),
        ("video-chat", Compose((Temporal(keep_ratio=0.5), TextGuided(keep_ratio=0.5, layer=0)))),
    ],
)
@torch.no_grad()
def test_prune_equals_reference_with_same_keep(seed, variant, policy) -> None:
    ref = _model(variant, seed)
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    ref64 = copy.deepcopy(ref).double()
    ids, types, u8 = _batch(ref.config, _pad_queries(QUERIES[1]), frames=3)
    images = normalize_frames(u8)
    out = fast(ids, types, u8, prune=policy)
    plan = out.prune
    assert plan is not None and 0 < int(plan.final_keep().sum()) < ids.numel()
    embeds = ref.encode_frames(images)
    kwargs = _reference_with_plan(ref, plan, ids, types, embeds)
    want32 = ref(**kwargs).logits
    kw64 = {k: (v.double() if _is_float(v) else v) for k, v in kwargs.items()}
    want64 = ref64(**kw64).logits
    assert out.logits.shape == want32.shape
    assert_parity(out.logits, want32, want64, what=f"pruned logits ({policy})")
    assert torch.equal(_ref_greedy(ref, 4, **kwargs), fast.generate(ids, types, u8,
                       max_new_tokens=4, prune=policy))  # fmt: skip
    # the kernels' scores match the reference oracles
    st = plan.stages[0]
    if isinstance(policy, Salient):
        pooled = pool_cls_attention(vision_cls_scores_reference(ref.model.vision, images))
        got = st.scores[st.layout.patch]
        want = pooled.reshape(-1)  # patch tokens in sequence order = frames in order
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    if isinstance(policy, TextGuided):
        rows = policy.query_rows(st.layout)
        want = lm_key_scores_reference(ref, ids, types, vision_embeds=embeds, layer=0,
                                       query_rows=rows)  # fmt: skip
        lay = st.layout
        torch.testing.assert_close(st.scores[lay.patch], want[lay.patch], rtol=1e-4, atol=1e-6)


@torch.no_grad()
def test_swap_fast_modules(seed) -> None:
    ref = _model("image", seed)
    ids, types, u8 = _batch(ref.config, ["what?"], frames=1)
    images = normalize_frames(u8)
    want = ref(ids, types, images).logits
    swapped = swap_fast_modules(copy.deepcopy(ref), backend="torch")
    assert type(swapped.model.layers[0]).__name__ == "FastCogVLMDecoderLayer"
    assert list(swapped.state_dict()) == list(ref.state_dict())
    torch.testing.assert_close(swapped(ids, types, images).logits, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(TypeError, match="CogVLM2ForCausalLM"):
        swap_fast_modules(torch.nn.Linear(2, 2))


# ---- GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["video-chat", "image"])
@torch.no_grad()
def test_gpu_bf16_small_parity(seed, variant) -> None:
    ref = _model(variant, seed, size="small").to("cuda", torch.bfloat16)
    fast = FastCogVLM2.from_reference(ref)
    ref64 = _model(variant, seed, size="small").to("cuda", torch.float64)
    ids, types, u8 = _batch(ref.config, _pad_queries(QUERIES[0]), frames=4, device="cuda")
    images = normalize_frames(u8)
    got = fast(ids, types, u8).logits
    want = ref(ids, types, images).logits
    want64 = ref64(ids, types, images.double()).logits
    assert_parity(got, want, want64, what=f"bf16 small {variant} logits")


@pytest.mark.gpu
def test_gpu_cuda_graph_decode_equals_eager_and_memory(seed) -> None:
    ref = _model("video-chat", seed, size="small").to("cuda", torch.bfloat16)
    fast = FastCogVLM2.from_reference(ref)
    ids, types, u8 = _batch(ref.config, _pad_queries(QUERIES[0]), frames=4, device="cuda")
    eager = fast.generate(ids, types, u8, max_new_tokens=12, cuda_graph=False)
    timings: dict = {}
    graphed = fast.generate(ids, types, u8, max_new_tokens=12, cuda_graph=True, timings=timings)
    assert torch.equal(eager, graphed)
    assert timings["decode_tokens"] == 11 * ids.shape[0]
    images = normalize_frames(u8)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    greedy_generate(ref, ids, types, images, max_new_tokens=12)
    ref_peak = torch.cuda.max_memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    fast.generate(ids, types, u8, max_new_tokens=12)
    fast_peak = torch.cuda.max_memory_allocated() - base
    assert fast_peak <= ref_peak, (fast_peak, ref_peak)
