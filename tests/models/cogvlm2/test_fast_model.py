"""FastCogVLM2 (models/cogvlm2/fast/) against the reference model from one state dict.

CPU: tiny config, fp32, uint8 frames in. Logits follow the parity rule (fast fp32 and reference
fp32 against the reference in fp64); ``generate`` (static cache) equals `greedy_generate` on the
reference; samplers, eos lists, ``stream``; decode buffers (and the CUDA graph on them) reused
across calls of one shape; pruning equals the reference run with the same keep masks;
checkpoint loading and bad input. GPU (marked): bf16 small config, CUDA-graph decode, memory.
"""

from __future__ import annotations

import copy

import pytest
import torch

from haic_kernels.models.cogvlm2 import (
    FastCogVLM2,
    SamplingParams,
    get_config,
    greedy_generate,
    normalize_frames,
    stack_prompts,
)
from haic_kernels.models.cogvlm2.save import save_checkpoint
from haic_kernels.models.cogvlm2.weights import CheckpointError
from haic_kernels.pruning import Compose, Salient, Temporal, TextGuided, pool_cls_attention
from haic_kernels.testing import assert_parity
from haic_kernels.testing.prune_scores import lm_key_scores_reference, vision_cls_scores_reference
from tests._triton import needs_triton_cpu

QUERIES = [("what is here?", "why?"), ("describe it", "and then")]


@pytest.fixture
def batch(tiny_prompts):
    """``batch(config, queries, frames=2)``: equal-length (ids [B, S], types [B, S], uint8
    frames [B * frames, H, W, 3])."""

    def make(config, queries, frames: int = 2):
        prompts, u8 = tiny_prompts(config, [(q, frames) for q in queries], equal=True)
        ids, types = stack_prompts(prompts)
        return ids, types, torch.cat(u8)

    return make


def test_state_dict_keys_and_shared_parameters(tiny_model) -> None:
    ref = tiny_model("image")
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    assert list(fast.state_dict()) == list(ref.state_dict())
    ref_ptrs = {n: p.data_ptr() for n, p in ref.named_parameters()}
    assert {n: p.data_ptr() for n, p in fast.named_parameters()} == ref_ptrs
    names = {n for n, _ in fast.named_modules()}
    assert {"model.vision.transformer.layers.1.attention", "model.layers.0.mlp"} <= names
    built = FastCogVLM2(get_config("tiny", "video-chat"), backend="torch")
    assert list(built.state_dict()) == list(tiny_model("video-chat").state_dict())


@pytest.mark.parametrize("variant", ["video-chat", "video-base", "image"])
@torch.no_grad()
def test_logits_parity_and_greedy_tokens(tiny_model, batch, variant) -> None:
    ref = tiny_model(variant)
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    ref64 = copy.deepcopy(ref).double()
    for queries in QUERIES:
        ids, types, u8 = batch(ref.config, queries)
        images = normalize_frames(u8)
        got = fast(ids, types, u8).logits
        want32 = ref(ids, types, u8).logits
        want64 = ref64(ids, types, images.double()).logits
        assert_parity(got, want32, want64, what=f"{variant} logits")
        # normalized float frames go in too
        assert_parity(fast(ids, types, images).logits, want32, want64, what="float frames")
        a = greedy_generate(ref, ids, types, images, max_new_tokens=4)
        assert torch.equal(fast.generate(ids, types, u8, max_new_tokens=4), a)


@pytest.mark.slow
@needs_triton_cpu
@torch.no_grad()
def test_triton_interpreter_forward(tiny_model, batch) -> None:
    ref = tiny_model("image", text={"num_layers": 1}, vision={"num_layers": 1})
    fast = FastCogVLM2.from_reference(ref, backend="triton")
    ids, types, u8 = batch(ref.config, ["hi?"], frames=1)
    got = fast(ids, types, u8).logits
    want32 = ref(ids, types, u8).logits
    want64 = copy.deepcopy(ref).double()(ids, types, normalize_frames(u8).double()).logits
    assert_parity(got, want32, want64, what="triton logits")


@pytest.mark.parametrize("variant", ["video-chat", "image"])
def test_generate_static_cache_equals_greedy_generate(tiny_model, batch, variant) -> None:
    ref = tiny_model(variant)
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    ids, types, u8 = batch(ref.config, QUERIES[0])
    want = greedy_generate(ref, ids, types, u8, max_new_tokens=6)
    timings: dict = {}
    got = fast.generate(ids, types, u8, max_new_tokens=6, timings=timings)
    assert torch.equal(got, want)
    assert timings["decode_tokens"] == 5 * ids.shape[0]
    assert set(timings) == {"prefill_s", "decode_s", "decode_tokens"}
    # eos: row 0 stops at its 2nd token, the batch when both rows have produced it
    eos = int(want[0, 1])
    want_eos = greedy_generate(ref, ids, types, u8, max_new_tokens=6, eos_token_id=eos)
    assert torch.equal(fast.generate(ids, types, u8, max_new_tokens=6, eos_token_id=eos), want_eos)
    assert fast.generate(ids, types, u8, max_new_tokens=0).shape == (ids.shape[0], 0)


def _forcing_sampler(forced: dict[tuple[int, int], int], seen_log: list | None = None):
    """A sampler: argmax, except ``forced[(step, row)]`` ids (and it keeps every ``seen``)."""
    step = [0]

    def sample(logits: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        if seen_log is not None:
            seen_log.append(seen.clone())
        out = logits.argmax(-1)
        for (s, row), tok in forced.items():
            if s == step[0]:
                out[row] = tok
        step[0] += 1
        return out

    return sample


def _unused_ids(tokens: torch.Tensor, n: int) -> list[int]:
    taken = set(tokens.reshape(-1).tolist())
    return [i for i in range(10, 400) if i not in taken][:n]


def test_eos_lists_stop_every_row(tiny_model, batch) -> None:
    """Every listed eos id stops a row; finished rows are padded with the first id."""
    fast = FastCogVLM2.from_reference(tiny_model("video-chat"), backend="torch")
    ids, types, u8 = batch(fast.config, QUERIES[0])
    free = fast.generate(ids, types, u8, max_new_tokens=5)
    pad, a, b = _unused_ids(free, 3)
    sampler = _forcing_sampler({(1, 0): a, (2, 1): b})  # row 0 ends at step 1, row 1 at 2
    got = fast.generate(ids, types, u8, max_new_tokens=5, eos_token_id=[pad, a, b],
                        sampler=sampler)  # fmt: skip
    assert got.shape == (2, 3)  # the batch stops once both rows finished
    assert got[0].tolist() == [int(free[0, 0]), a, pad]
    assert got[1].tolist() == [*free[1, :2].tolist(), b]
    assert torch.equal(fast.generate(ids, types, u8, max_new_tokens=5, eos_token_id=[pad]), free)


@torch.no_grad()
def test_positions_are_bounded_by_the_context_not_max_position_embeddings(
    tiny_model, batch
) -> None:
    """The releases' video config.json says max_position_embeddings 2048 and the demos ask for
    2048 new tokens: the fast model, like the reference, is bounded by ``position_limit``
    (context_length) only, exactly: the last fed position is prompt end + n - 2."""
    ref = tiny_model("video-chat", text={"max_position_embeddings": 8, "context_length": 48})
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    ids, types, u8 = batch(ref.config, ["ab"], frames=1)
    last = int(fast.batch(ids, types).max_position)
    assert last >= 8  # the prompt alone passes max_position_embeddings
    n = 48 - last  # positions last .. 47 are fed, the n-th token is never fed
    got = fast.generate(ids, types, u8, max_new_tokens=n)
    assert torch.equal(got, greedy_generate(ref, ids, types, u8, max_new_tokens=n))
    with pytest.raises(ValueError, match="context of 48 positions"):
        fast.generate(ids, types, u8, max_new_tokens=n + 1)
    with pytest.raises(ValueError, match="context of 48 positions"):
        list(fast.stream(ids, types, u8, max_new_tokens=n + 1))


def test_sampler_sees_prompt_and_new_ids(tiny_model, tiny_prompts) -> None:
    """``sampler(logits, seen)``: greedy through a sampler equals argmax; ``seen`` holds each
    row's prompt ids then its new ids, -1 after them and after the row finished."""
    fast = FastCogVLM2.from_reference(tiny_model("video-chat"), backend="torch")
    prompts, frames = tiny_prompts(fast.config, [("what is here?", 2), ("why", 1)])
    lens = [len(p) for p in prompts]
    assert lens[0] > lens[1]
    rows = ([p.input_ids for p in prompts], [p.token_type_ids for p in prompts])
    u8 = torch.cat(frames)
    free = fast.generate(*rows, u8, max_new_tokens=4)
    (eos,) = _unused_ids(free, 1)
    seen_log: list[torch.Tensor] = []
    sampler = _forcing_sampler({(0, 1): eos}, seen_log)  # row 1 finishes at once
    got = fast.generate(*rows, u8, max_new_tokens=4, sampler=sampler, eos_token_id=eos)
    assert torch.equal(got[0], free[0]) and got[1].tolist() == [eos] * 4
    assert len(seen_log) == 4
    for step, seen in enumerate(seen_log):
        assert seen.shape == (2, lens[0] + step) and seen.dtype == torch.int64
        for b in range(2):
            assert torch.equal(seen[b, : lens[b]], prompts[b].input_ids)
        assert seen[0, lens[0] :].tolist() == free[0, :step].tolist()
        tail = [eos] + [-1] * (step - 1) if step else []
        assert seen[1, lens[1] :].tolist() == tail + [-1] * (lens[0] + step - lens[1] - len(tail))


def test_sampler_output_is_checked(tiny_model, batch) -> None:
    fast = FastCogVLM2.from_reference(tiny_model("video-chat", text={"num_layers": 1}),
                                      backend="torch")  # fmt: skip
    ids, types, u8 = batch(fast.config, ["a?"], frames=1)
    with pytest.raises(ValueError, match="sampler"):
        fast.generate(ids, types, u8, max_new_tokens=2, sampler=lambda lg, seen: lg)
    with pytest.raises(TypeError, match="sampler"):
        fast.generate(ids, types, u8, max_new_tokens=2, sampler="top-k")


def test_stream_yields_generate_steps(tiny_model, batch) -> None:
    fast = FastCogVLM2.from_reference(tiny_model("image"), backend="torch")
    ids, types, u8 = batch(fast.config, QUERIES[1], frames=1)
    want = fast.generate(ids, types, u8, max_new_tokens=5)
    steps = list(fast.stream(ids, types, u8, max_new_tokens=5))
    assert len(steps) == 5 and torch.equal(torch.stack(steps, 1), want)
    eos = int(want[0, 0])  # with eos_check_every=1 the stream ends right after every row did
    rows_done = (want == eos).cummax(1).values.all(0).nonzero()
    stop = int(rows_done[0]) + 1 if rows_done.numel() else 5
    assert len(list(fast.stream(ids, types, u8, max_new_tokens=5, eos_token_id=eos))) == stop
    with pytest.raises(ValueError, match="eos_check_every"):
        fast.stream(ids, types, u8, max_new_tokens=5, eos_check_every=0)


@pytest.mark.slow
@torch.no_grad()
def test_both_models_take_a_sampler_and_stream_alike(tiny_model, batch) -> None:
    """What `haic run --do-sample --stream` relies on: ``sampler=`` and ``stream`` with one
    signature on the reference and the fast model; one seed gives both the same sampled tokens
    (the same generator draws over logits equal to fp32 rounding), and a stream yields the
    columns of `generate`; ``vision_embeds=`` (the chat's encoded video) gives the same."""
    ref = tiny_model("video-chat")
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    ids, types, u8 = batch(ref.config, QUERIES[0])
    params = SamplingParams(do_sample=True, temperature=1.3, top_k=50, top_p=0.9,
                            repetition_penalty=1.2, seed=11)  # fmt: skip
    kw = dict(max_new_tokens=6, eos_token_id=list(ref.config.eos_token_ids))
    greedy = ref.generate(ids, types, u8, **kw)
    runs = {}
    for name, model in (("reference", ref), ("fast", fast)):
        got = model.generate(ids, types, u8, sampler=params.sampler(), **kw)
        streamed = list(model.stream(ids, types, u8, sampler=params.sampler(), **kw))
        embeds = model.encode_frames(u8)
        again = model.generate(ids, types, vision_embeds=embeds, sampler=params.sampler(), **kw)
        assert torch.equal(torch.stack(streamed, 1), got) and torch.equal(again, got), name
        runs[name] = got
    assert torch.equal(runs["fast"], runs["reference"])
    assert not torch.equal(runs["reference"], greedy)  # the sampler was used


@pytest.mark.slow
def test_decode_buffers_are_reused_for_one_shape(tiny_model, batch) -> None:
    """The decode state (static cache, and the CUDA graph captured on it) survives a call and is
    reused by the next call of the same shape; another shape replaces it and drops the graph."""
    fast = FastCogVLM2.from_reference(tiny_model("video-chat"), backend="torch")
    ids, types, u8 = batch(fast.config, QUERIES[0])
    first = fast.generate(ids, types, u8, max_new_tokens=4)
    state = fast._decode
    ptrs = [c.k.data_ptr() for c in state.cache.layers]
    state.graph, state.warm = "captured", True  # stands in for a CUDA graph on these buffers
    ids2, types2, u8b = batch(fast.config, ("what is that?", "how?"))  # the same shape
    again = fast.generate(ids2, types2, u8b, max_new_tokens=4)
    assert fast._decode is state and state.graph == "captured"
    assert [c.k.data_ptr() for c in state.cache.layers] == ptrs
    fresh = FastCogVLM2.from_reference(tiny_model("video-chat"), backend="torch")
    assert torch.equal(again, fresh.generate(ids2, types2, u8b, max_new_tokens=4))
    assert torch.equal(fast.generate(ids, types, u8, max_new_tokens=4), first)
    # new parameter tensors (not an in-place update): a graph would read the old ones
    fast.lm_head.weight = torch.nn.Parameter(fast.lm_head.weight.detach().clone())
    fast.generate(ids, types, u8, max_new_tokens=4)
    assert state.graph is None and not state.warm
    state.graph, state.warm = "captured", True
    fast.generate(ids, types, u8, max_new_tokens=6)  # longer caches: a new shape
    assert state.graph is None and not state.warm
    fast.generate(ids[:1], types[:1], u8[:2], max_new_tokens=6)  # another batch size
    assert fast._decode is not state
    fast.release_decode_buffers()
    assert fast._decode is None


def test_checkpoint_roundtrip_and_bad_checkpoints(tiny_model, batch, tmp_path) -> None:
    ref = tiny_model("image")
    save_checkpoint(ref, tmp_path / "ok", config=ref.config)
    fast = FastCogVLM2.from_pretrained(
        tmp_path / "ok", dtype=torch.float32, device="cpu", backend="torch"
    )
    ids, types, u8 = batch(ref.config, ["what?"], frames=1)
    with torch.no_grad():
        torch.testing.assert_close(fast(ids, types, u8).logits, ref(ids, types, u8).logits)
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
def test_bad_input_clear_errors(tiny_model, batch) -> None:
    ref = tiny_model("video-chat", text={"max_position_embeddings": 32})
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    cfg = ref.config
    ids, types, u8 = batch(cfg, ["a?"], frames=1)  # positions up to 24 fit in 32
    cases = [
        (lambda: fast(ids, types, u8[:0]), ValueError, "frames"),
        (lambda: fast(ids, types, u8.permute(0, 3, 1, 2)), ValueError, "frames"),
        (lambda: fast(ids, types), ValueError, "vision slots"),
        (lambda: fast(ids, types, u8, vision_embeds=u8.float()), ValueError, "not both"),
        (lambda: fast(ids + 1000, types, u8), ValueError, "input_ids"),
        (lambda: fast(ids, types * 2, u8), ValueError, "token_type_ids"),
        (lambda: fast.generate(ids, types, u8, max_new_tokens=30), ValueError,
         "max_position_embeddings"),
        (lambda: fast.generate(ids, types, u8, max_new_tokens=-1), ValueError, "max_new_tokens"),
        (lambda: fast.generate(ids, types, u8, max_new_tokens=2, eos_token_id=True), TypeError,
         "eos_token_id"),
        (lambda: fast.generate(ids, types, u8, max_new_tokens=2, eos_token_id=[]), TypeError,
         "eos_token_id"),
        (lambda: fast.generate(ids, types, u8, max_new_tokens=2, cuda_graph=True), ValueError,
         "cuda_graph"),
        (lambda: fast(ids, types, u8, prune="half"), TypeError, "prune"),
        (lambda: fast(ids, types, vision_embeds=torch.randn(1, cfg.tokens_per_frame,
                                                            cfg.text.hidden_size),
                      prune=Salient(0.5)), ValueError, "cls_scores"),
        (lambda: FastCogVLM2.from_reference(ref, backend="cudnn"), ValueError, "backend"),
    ]  # fmt: skip
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    long_ids, long_types, long_u8 = batch(cfg, ["a much longer question here?"], frames=1)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        fast(long_ids, long_types, long_u8)


def _is_float(v: object) -> bool:
    return isinstance(v, torch.Tensor) and v.is_floating_point()


def _reference_with_plan(plan, ids, types, embeds):
    """The reference call with the fast model's keep masks: (kwargs of the prefill call)."""
    kwargs = dict(input_ids=ids, token_type_ids=types, vision_embeds=embeds)
    stages = list(plan.stages)
    if stages[0].keep_from_layer == 0:
        kwargs = stages.pop(0).model_inputs(ids, types, vision_embeds=embeds)
    if stages:
        (lm,) = stages
        kwargs.update(keep=lm.keep, keep_from_layer=lm.keep_from_layer)
    return kwargs


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
def test_prune_equals_reference_with_same_keep(tiny_model, batch, variant, policy) -> None:
    ref = tiny_model(variant)
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    ref64 = copy.deepcopy(ref).double()
    ids, types, u8 = batch(ref.config, QUERIES[1], frames=3)
    images = normalize_frames(u8)
    out = fast(ids, types, u8, prune=policy)
    plan = out.prune
    assert plan is not None and 0 < int(plan.final_keep().sum()) < ids.numel()
    assert out.lengths.tolist() == plan.final_keep().sum(1).tolist()
    embeds = ref.encode_frames(images)
    kwargs = _reference_with_plan(plan, ids, types, embeds)
    want32 = ref(**kwargs).logits
    want64 = ref64(**{k: (v.double() if _is_float(v) else v) for k, v in kwargs.items()}).logits
    assert out.logits.shape == want32.shape
    assert_parity(out.logits, want32, want64, what=f"pruned logits ({policy})")
    got = fast.generate(ids, types, u8, max_new_tokens=4, prune=policy)
    assert torch.equal(_ref_greedy(ref, 4, **kwargs), got)
    # the kernels' scores match the reference oracles
    st = plan.stages[0]
    if isinstance(policy, Salient):
        pooled = pool_cls_attention(vision_cls_scores_reference(ref.model.vision, images))
        want = pooled.reshape(-1)  # patch tokens in sequence order = frames in order
        torch.testing.assert_close(st.scores[st.layout.patch], want, rtol=1e-4, atol=1e-6)
    if isinstance(policy, TextGuided):
        rows = policy.query_rows(st.layout)
        want = lm_key_scores_reference(ref, ids, types, vision_embeds=embeds, layer=0,
                                       query_rows=rows)  # fmt: skip
        lay = st.layout
        torch.testing.assert_close(st.scores[lay.patch], want[lay.patch], rtol=1e-4, atol=1e-6)


# ---- GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["video-chat", "image"])
@torch.no_grad()
def test_gpu_bf16_small_parity(tiny_model, batch, variant) -> None:
    ref = tiny_model(variant, size="small").to("cuda", torch.bfloat16)
    fast = FastCogVLM2.from_reference(ref)
    ref64 = tiny_model(variant, size="small").to("cuda", torch.float64)
    ids, types, u8 = (t.cuda() for t in batch(ref.config, QUERIES[0], frames=4))
    got = fast(ids, types, u8).logits
    want = ref(ids, types, u8).logits
    want64 = ref64(ids, types, normalize_frames(u8).double()).logits
    assert_parity(got, want, want64, what=f"bf16 small {variant} logits")


@pytest.mark.gpu
def test_gpu_cuda_graph_decode_equals_eager_and_memory(tiny_model, batch) -> None:
    ref = tiny_model("video-chat", size="small").to("cuda", torch.bfloat16)
    fast = FastCogVLM2.from_reference(ref)
    ids, types, u8 = (t.cuda() for t in batch(ref.config, QUERIES[0], frames=4))
    eager = fast.generate(ids, types, u8, max_new_tokens=12, cuda_graph=False)
    timings: dict = {}
    graphed = fast.generate(ids, types, u8, max_new_tokens=12, cuda_graph=True, timings=timings)
    assert torch.equal(eager, graphed)
    assert timings["decode_tokens"] == 11 * ids.shape[0]
    graph = fast._decode.graph
    assert graph is not None  # captured, and replayed by the next call of this shape
    recorded: list[torch.Tensor] = []
    again = fast.generate(
        ids,
        types,
        u8,
        max_new_tokens=12,
        cuda_graph=True,
        sampler=lambda lg, seen: recorded.append(lg) or lg.argmax(-1),
    )
    assert torch.equal(again, eager) and fast._decode.graph is graph and len(recorded) == 12
    fast.release_decode_buffers()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    greedy_generate(ref, ids, types, u8, max_new_tokens=12)
    ref_peak = torch.cuda.max_memory_allocated() - base
    torch.cuda.reset_peak_memory_stats()
    fast.generate(ids, types, u8, max_new_tokens=12)
    fast_peak = torch.cuda.max_memory_allocated() - base
    assert fast_peak <= ref_peak, (fast_peak, ref_peak)
