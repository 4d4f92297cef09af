"""FastCogVLM2 ``prune=`` on rows that keep different counts (the one prefill, packed rows).

CPU, tiny config, fp32, uint8 frames. Three videos with 3/1/2 frames, given ragged (padded +
``lengths``) or as rows of equal length (the text evens them out), pruned with a per-video
Temporal ratio, TextGuided at layer 0 and their Compose: the rows keep different counts. Each
row's last-token logits (parity rule) and every greedy step's logits and tokens equal the
reference model run on that row alone (batch 1) with that row's keep masks; each row's keep
masks equal those of the fast model pruning that row alone. Triton interpreter: the Compose
case. GPU (marked): bf16 small config, eager and CUDA-graph decode give the same tokens.
"""

from __future__ import annotations

import copy

import pytest
import torch

from haic_kernels.models.cogvlm2 import (
    FastCogVLM2,
    build_position_ids,
    normalize_frames,
    pad_prompts,
)
from haic_kernels.pruning import Compose, Salient, Temporal, TextGuided
from haic_kernels.testing import assert_parity
from tests._triton import needs_triton_cpu

FRAMES = (3, 1, 2)
QUERIES = ("what is here?", "why", "and what then")
POLICIES = [
    Temporal(keep_ratio=0.5, per="video"),
    TextGuided(keep_ratio=0.5, layer=0),
    Compose((Temporal(keep_ratio=0.5), TextGuided(keep_ratio=0.5, layer=0))),
    Salient(keep_ratio=0.5, per="video", merge=True),
]
STEPS = 3


@pytest.fixture
def setup(tiny_model, tiny_prompts):
    """``setup(equal, size="tiny", frames=FRAMES, **overrides)``: (reference, prompts, frames per
    prompt), the prompts of different lengths or (``equal``) of one length."""

    def make(equal: bool, size: str = "tiny", frames=FRAMES, **over):
        ref = tiny_model("video-chat", size=size, **over)
        prompts, u8 = tiny_prompts(ref.config, list(zip(QUERIES, frames)), equal=equal)
        assert len({len(p) for p in prompts}) == (1 if equal else len(prompts))
        return ref, prompts, u8

    return make


def _row_call(plan, b: int, ids, types, embeds) -> dict:
    """Reference kwargs for row b alone (batch 1) with row b's keep masks from ``plan``."""
    pos = build_position_ids(types)
    rows = embeds.reshape(-1, embeds.shape[-1])
    kw: dict = {}
    for st in plan.stages:
        if st.vision_embeds is not None:  # merged rows: row b's frames of the batch's rows
            lay, d = st.layout, rows.shape[-1]
            f0, f1 = int(lay.cu_frames[b]), int(lay.cu_frames[b + 1])
            rows = st.vision_embeds.view(-1, lay.tokens_per_frame, d)[f0:f1].reshape(-1, d)
        keep = st.keep[b, : int(st.layout.lengths[b])]
        assert keep.shape == ids.shape
        if st.keep_from_layer == 0:  # drop before the LM: only the kept tokens, original ids
            rows = rows[keep[types == 1]]
            ids, types, pos = ids[keep], types[keep], pos[keep]
        else:
            kw.update(keep=keep[None], keep_from_layer=st.keep_from_layer)
    return dict(input_ids=ids[None], token_type_ids=types[None], position_ids=pos[None],
                vision_embeds=rows, **kw)  # fmt: skip


@torch.no_grad()
def _ref_steps(model, steps: int, kwargs: dict, follow: torch.Tensor | None = None):
    """(last-token logits [steps, V], tokens [steps]) of greedy decoding with a cache
    (feeding ``follow``'s tokens instead of its own argmax when given)."""
    out = model(**kwargs, use_cache=True)
    logits, toks = [], []
    for i in range(steps):
        logits.append(out.logits[0, -1])
        toks.append(out.logits[0, -1].argmax() if follow is None else follow[i])
        if i + 1 < steps:
            nxt, lang = toks[-1].view(1, 1), torch.zeros(1, 1, dtype=torch.long)
            out = model(nxt, lang, past_key_values=out.past_key_values, use_cache=True)
    return torch.stack(logits), torch.stack(toks)


def _to64(kw: dict) -> dict:
    return {k: v.double() if getattr(v, "is_floating_point", bool)() else v for k, v in kw.items()}


@pytest.mark.parametrize("equal", [False, True], ids=["ragged", "equal-length"])
@pytest.mark.parametrize(
    "policy", POLICIES, ids=["temporal", "text_guided", "compose", "salient_merge"]
)
@torch.no_grad()
def test_pruned_rows_match_rows_alone(setup, greedy_recorder, policy, equal) -> None:
    ref, prompts, frames = setup(equal)
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    ref64 = copy.deepcopy(ref).double()
    ids, types, lens = pad_prompts(prompts)
    u8 = torch.cat(frames)
    out = fast(ids, types, u8, prune=policy, lengths=None if equal else lens)
    plan = out.prune
    kept = out.lengths
    assert plan is not None and kept is not None
    assert len(set(kept.tolist())) > 1  # the rows really keep different counts
    assert bool((kept < lens).all())  # and every row drops tokens
    assert out.logits.shape[:2] == (3, int(kept.max()))

    got = fast.generate(ids, types, u8, prune=policy, max_new_tokens=STEPS,
                        lengths=None if equal else lens, sampler=greedy_recorder)  # fmt: skip
    seen = greedy_recorder.logits
    assert got.shape == (3, STEPS) and len(seen) == STEPS

    for b, (p, f) in enumerate(zip(prompts, frames)):
        # the row's keep masks are those of the row pruned alone (dense path, batch 1)
        alone = fast(p.input_ids[None], p.token_type_ids[None], f, prune=policy).prune
        for st, st1 in zip(plan.stages, alone.stages):
            assert torch.equal(st.keep[b, : int(st.layout.lengths[b])], st1.keep[0])
        embeds = ref.encode_frames(normalize_frames(f))
        kw = _row_call(plan, b, p.input_ids, p.token_type_ids, embeds)
        l32, t32 = _ref_steps(ref, STEPS, kw)
        l64, _ = _ref_steps(ref64, STEPS, _to64(kw), follow=t32)
        n = int(kept[b])
        assert bool(out.logits[b, n:].isnan().all())
        assert_parity(out.logits[b, n - 1], l32[0], l64[0], what=f"{policy} row {b} last")
        assert torch.equal(got[b], t32), f"row {b} greedy tokens"
        step_logits = torch.stack([s[b] for s in seen])
        assert_parity(step_logits, l32, l64, what=f"{policy} row {b} decode logits")


@pytest.mark.parametrize(
    "policy",
    [
        Compose((Temporal(keep_ratio=0.5), Salient(keep_ratio=0.4, per="frame"))),
        Compose((Salient(keep_ratio=0.6), TextGuided(keep_ratio=0.3, layer=0, per="frame"))),
    ],
    ids=["per_frame_after_per_video", "per_frame_after_per_frame"],
)
@torch.no_grad()
def test_kept_counts_predicted_or_read_where_scores_decide(setup, policy) -> None:
    """A per-frame stage after a per-video one: how the earlier stage split its budget over
    frames depends on the scores, so the model reads that split back once; otherwise the kept
    counts are predicted. Either way they are the counts the selection keeps."""
    ref, prompts, frames = setup(equal=False)
    fast = FastCogVLM2.from_reference(ref, backend="torch")
    ids, types, lens = pad_prompts(prompts)
    out = fast(ids, types, torch.cat(frames), prune=policy, lengths=lens)
    assert out.lengths.tolist() == out.prune.final_keep().sum(1).tolist()
    for st in out.prune.stages:
        assert bool((st.kept_per_sequence < st.layout.lengths).all())  # every stage drops


COMPOSE = POLICIES[2]


@pytest.mark.slow
@needs_triton_cpu
@torch.no_grad()
def test_pruned_ragged_triton_interpreter(setup) -> None:
    ref, prompts, frames = setup(equal=False, frames=(2, 1), vision={"num_layers": 1})
    fast = FastCogVLM2.from_reference(ref, backend="triton")
    ref64 = copy.deepcopy(ref).double()
    ids, types, lens = pad_prompts(prompts)
    out = fast(ids, types, torch.cat(frames), lengths=lens, prune=COMPOSE)
    for b, (p, f) in enumerate(zip(prompts, frames)):
        embeds = ref.encode_frames(normalize_frames(f))
        kw = _row_call(out.prune, b, p.input_ids, p.token_type_ids, embeds)
        n = int(out.lengths[b])
        want, want64 = ref(**kw).logits[0, -1], ref64(**_to64(kw)).logits[0, -1]
        assert_parity(out.logits[b, n - 1], want, want64, what=f"triton pruned row {b}")


# ---- GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@torch.no_grad()
def test_gpu_bf16_pruned_ragged_parity_and_graph_decode(setup) -> None:
    ref, prompts, frames = setup(equal=False, size="small")
    ref64 = copy.deepcopy(ref).to("cuda", torch.float64)
    ref = ref.to("cuda", torch.bfloat16)
    fast = FastCogVLM2.from_reference(ref)
    ids, types, lens = (t.cuda() for t in pad_prompts(prompts))
    u8 = torch.cat(frames).cuda()
    out = fast(ids, types, u8, lengths=lens, prune=COMPOSE)
    assert len(set(out.lengths.tolist())) > 1
    for b, (p, f) in enumerate(zip(prompts, frames)):
        img = normalize_frames(f.cuda())
        kw = _row_call(out.prune, b, p.input_ids.cuda(), p.token_type_ids.cuda(),
                       ref.encode_frames(img))  # fmt: skip
        kw64 = _row_call(out.prune, b, p.input_ids.cuda(), p.token_type_ids.cuda(),
                         ref64.encode_frames(img.double()))  # fmt: skip
        n = int(out.lengths[b])
        want, want64 = ref(**kw).logits[0, -1], ref64(**kw64).logits[0, -1]
        assert_parity(out.logits[b, n - 1], want, want64, what=f"bf16 pruned ragged row {b}")
    kw = dict(lengths=lens, prune=COMPOSE, max_new_tokens=10)
    eager = fast.generate(ids, types, u8, cuda_graph=False, **kw)
    graphed = fast.generate(ids, types, u8, cuda_graph=True, **kw)
    assert torch.equal(eager, graphed)
