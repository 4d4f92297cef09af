"""Pruning policies against straightforward PyTorch loops of the published rules (same kept
tokens, ties to the earlier token), on ragged batches, plus invariants and bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from haic_kernels.models.cogvlm2 import ByteTokenizer, build_position_ids, build_prompt, get_config
from haic_kernels.pruning import (
    BEFORE_LM,
    IN_LM,
    Compose,
    PrunePolicy,
    Salient,
    Temporal,
    TextGuided,
    TokenCounts,
    TokenLayout,
    compose,
    plan_stages,
    pool_cls_attention,
    query_rows,
    salient,
    temporal,
    text_guided,
)
from haic_kernels.pruning.layout import BOI, EOI, PATCH, TEXT

BACKENDS = ["torch", "triton"]


def k_of(ratio: float, n: int) -> int:
    """The documented rule, in exact arithmetic: ceil(ratio * n), at least 1 of a non-empty set."""
    return 0 if n == 0 else max(1, math.ceil(Fraction(str(ratio)) * n))


def prompts(cfg, frames=(1, 3, 2), template="chat"):
    cfg = get_config("tiny", "video-chat" if template == "chat" else "video-base")
    tok = ByteTokenizer()
    ps = [build_prompt(tok, f"q{i}?", f, cfg) for i, f in enumerate(frames)]
    return cfg, ps


def topk_loop(items: list[tuple[float, object]], k: int) -> set:
    """Keep the k items of highest score; equal scores in their listed (sequence) order."""
    order = sorted(range(len(items)), key=lambda i: (-items[i][0], i))
    return {items[i][1] for i in order[:k]}


def kept_patches(res, ps) -> list[set]:
    """Per video, the kept (frame, patch) pairs read off the keep mask via the prompt slices."""
    out = []
    for b, p in enumerate(ps):
        s = set()
        for f, sl in enumerate(p.vision_slices):
            for n in range(sl.stop - sl.start - 2):
                if bool(res.keep[b, sl.start + 1 + n]):
                    s.add((f, n))
        out.append(s)
    return out


# ---- layout -------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["chat", "base"])
def test_layout_roles_and_frames(template) -> None:
    cfg, ps = prompts(None, (2, 0, 3), template)
    lay = TokenLayout.from_token_types([p.token_type_ids for p in ps], cfg.tokens_per_frame)
    assert lay.cu_frames.tolist() == [0, 2, 2, 5]
    for b, p in enumerate(ps):
        assert int(lay.lengths[b]) == len(p)
        for f, sl in enumerate(p.vision_slices):
            assert lay.role[b, sl.start] == BOI and lay.role[b, sl.stop - 1] == EOI
            assert (lay.role[b, sl.start + 1 : sl.stop - 1] == PATCH).all()
            assert (lay.frame[b, sl] == int(lay.cu_frames[b]) + f).all()
        assert (lay.role[b, p.text_slice] == TEXT).all()
        assert (lay.role[b, len(p) :] == -1).all()
    with pytest.raises(ValueError, match="whole number of frames"):
        TokenLayout.from_token_types(torch.tensor([[0, 1, 1, 1, 0]]), cfg.tokens_per_frame)


# ---- temporal -----------------------------------------------------------------------------


def temporal_loop(embeds: list[torch.Tensor], ratio: float, per: str) -> list[set]:
    """DyCoke/FastVID-style temporal rule, plainly: score = 1 - cos with the same patch of the
    previous frame (fp64), first frame +inf; top ceil(ratio * n) per video, or per frame with
    the first frame kept whole."""
    out = []
    for e in embeds:
        x = e[:, 1:-1].double()
        f, n = x.shape[:2]
        score = {}
        for fi in range(f):
            for ni in range(n):
                a, b = x[fi, ni], x[fi - 1, ni]
                # cos = a.b / (|a| |b|), in fp64; exactly 1 for a repeated token (ties stay ties).
                cos = float(a @ b) / math.sqrt(float(a @ a) * float(b @ b)) if fi else 0.0
                score[fi, ni] = math.inf if fi == 0 else 1 - cos
        if per == "video":
            items = [(float(score[fi, ni]), (fi, ni)) for fi in range(f) for ni in range(n)]
            out.append(topk_loop(items, k_of(ratio, len(items))))
        else:
            s = set()
            for fi in range(f):
                items = [(float(score[fi, ni]), (fi, ni)) for ni in range(n)]
                s |= topk_loop(items, n if fi == 0 else k_of(ratio, n))
            out.append(s)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per", ["video", "frame"])
@pytest.mark.parametrize("ratio", [0.3, 0.05])
def test_temporal_matches_loop_ragged_batch(seed, backend, per, ratio) -> None:
    cfg, ps = prompts(None, (1, 3, 2))
    tpf, d = cfg.tokens_per_frame, 24
    embeds = [torch.randn(p.num_frames, tpf, d) for p in ps]
    # Frame 2 of video 1 repeats frame 1: its scores are all 0, ties broken by index.
    embeds[1][2] = embeds[1][1]
    res = temporal(
        torch.cat(embeds),
        [p.token_type_ids for p in ps],
        tokens_per_frame=tpf,
        keep_ratio=ratio,
        per=per,
        backend=backend,
    )
    assert kept_patches(res, ps) == temporal_loop(embeds, ratio, per)
    lay = res.layout
    assert res.keep[lay.real & ~lay.patch].all() and not res.keep[~lay.real].any()
    if per == "frame":  # the repeated frame keeps its first patches
        k = k_of(ratio, tpf - 2)
        assert {n for f, n in kept_patches(res, ps)[1] if f == 2} == set(range(k))
    assert res.cu_seqlens.tolist()[-1] == int(res.keep.sum())


def test_ratio_one_is_identity_and_tiny_ratio_keeps_one_per_frame(seed) -> None:
    cfg, ps = prompts(None, (3, 2))
    tpf = cfg.tokens_per_frame
    types = [p.token_type_ids for p in ps]
    embeds = torch.randn(5, tpf, 16)
    scores = torch.rand(5, tpf - 2)
    lay = TokenLayout.from_token_types(types, tpf)
    merged = salient(
        scores, types, tokens_per_frame=tpf, keep_ratio=1.0, merge=True, vision_embeds=embeds
    )
    guided = text_guided(
        torch.rand(lay.role.shape), layout=lay, keep_ratio=1.0, layer=0, num_layers=2
    )
    for res in (temporal(embeds, types, tokens_per_frame=tpf, keep_ratio=1.0), merged, guided):
        assert torch.equal(res.keep, lay.real), res.policy
    assert torch.equal(merged.vision_embeds, embeds.reshape(-1, 16))
    # ceil never rounds a frame to zero tokens: 0.001 of 16 patches keeps 1 per frame.
    res = salient(scores, types, tokens_per_frame=tpf, keep_ratio=0.001)
    per_frame = torch.bincount(lay.frame[res.keep & lay.patch], minlength=5)
    assert per_frame.tolist() == [1] * 5
    res = temporal(embeds, types, tokens_per_frame=tpf, keep_ratio=0.001, per="frame")
    per_frame = torch.bincount(lay.frame[res.keep & lay.patch], minlength=5)
    assert per_frame.tolist() == [tpf - 2, 1, 1, tpf - 2, 1]  # first frames whole


def test_all_text_prompts_keep_everything() -> None:
    cfg, ps = prompts(None, (0, 0))
    types = [p.token_type_ids for p in ps]
    tpf = cfg.tokens_per_frame
    res = temporal(torch.zeros(0, tpf, 8), types, tokens_per_frame=tpf, keep_ratio=0.1)
    assert torch.equal(res.keep, res.layout.real)
    res = salient(torch.zeros(0, tpf - 2), types, tokens_per_frame=tpf, keep_ratio=0.1)
    assert torch.equal(res.keep, res.layout.real)


def test_positions_are_kept_not_renumbered(seed) -> None:
    cfg, ps = prompts(None, (2, 2))
    ids = torch.stack([p.input_ids[:60] for p in ps])  # equal lengths: same frame counts
    ids = torch.stack([p.input_ids for p in ps])
    types = torch.stack([p.token_type_ids for p in ps])
    tpf = cfg.tokens_per_frame
    res = temporal(
        torch.randn(4, tpf, 8), types, tokens_per_frame=tpf, keep_ratio=0.25, per="frame"
    )
    inp = res.model_inputs(ids, types)
    assert torch.equal(inp["position_ids"], build_position_ids(types)[res.keep].view(2, -1))
    c = res.compact(
        torch.randn(2, ids.shape[1], 4),
        position_ids=build_position_ids(types),
        token_type_ids=types,
    )
    assert torch.equal(c.position_ids, inp["position_ids"].reshape(-1))
    assert torch.equal(c.token_type_ids, inp["token_type_ids"].reshape(-1))


# ---- salient ------------------------------------------------------------------------------


def test_pool_cls_attention_matches_loop(seed) -> None:
    g = 8
    cls = torch.rand(3, 1 + g * g)
    out = pool_cls_attention(cls)
    for f in range(3):
        for i in range(g // 2):
            for j in range(g // 2):
                want = sum(
                    float(cls[f, 1 + (2 * i + a) * g + 2 * j + b]) for a in (0, 1) for b in (0, 1)
                )
                assert abs(float(out[f, i * (g // 2) + j]) - want) < 1e-6
    with pytest.raises(ValueError, match="square"):
        pool_cls_attention(torch.rand(3, 1 + 15))


@pytest.mark.parametrize("backend", BACKENDS)
def test_salient_and_merge_match_loop(seed, backend) -> None:
    cfg, ps = prompts(None, (2, 1, 3))
    tpf, d = cfg.tokens_per_frame, 20
    n = tpf - 2
    embeds = torch.randn(6, tpf, d)
    scores = torch.rand(6, n)
    scores[0, :4] = 0.5  # ties: the earlier patches win
    ratio = 0.25
    res = salient(
        scores,
        [p.token_type_ids for p in ps],
        tokens_per_frame=tpf,
        keep_ratio=ratio,
        merge=True,
        vision_embeds=embeds,
        backend=backend,
    )
    # Loop: per frame top ceil(ratio*n) by CLS score; each dropped patch joins the kept patch
    # of its frame with the highest cosine (fp64, earlier on ties); kept = mean of its group.
    want_keep, frame = [], 0
    merged = embeds.clone().double()
    for p in ps:
        s = set()
        for f in range(p.num_frames):
            items = [(float(scores[frame, i]), i) for i in range(n)]
            kept = sorted(topk_loop(items, k_of(ratio, n)))
            s |= {(f, i) for i in kept}
            x = embeds[frame, 1:-1].double()
            groups = {j: [j] for j in kept}
            for i in range(n):
                if i in groups:
                    continue
                cos = [float(F.cosine_similarity(x[i], x[j], 0)) for j in kept]
                groups[kept[max(range(len(kept)), key=lambda t: (cos[t], -t))]].append(i)
            for j, members in groups.items():
                merged[frame, 1 + j] = x[members].mean(0)
            frame += 1
        want_keep.append(s)
    assert kept_patches(res, ps) == want_keep
    got = res.vision_embeds.view(6, tpf, d)
    kept_rows = torch.zeros(6, tpf, dtype=torch.bool)
    lay = res.layout
    kept_rows[lay.frame[res.keep & lay.vision], lay.slot[res.keep & lay.vision]] = True
    torch.testing.assert_close(got[kept_rows].double(), merged[kept_rows], atol=1e-5, rtol=1e-5)
    assert float(res.sizes[lay.patch].sum()) == 6 * n


# ---- text-guided --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per", ["video", "frame"])
def test_text_guided_matches_loop(seed, backend, per) -> None:
    cfg, ps = prompts(None, (1, 3, 2))
    lay = TokenLayout.from_token_types([p.token_type_ids for p in ps], cfg.tokens_per_frame)
    scores = torch.rand(lay.role.shape)
    scores[1, 5:9] = 0.75  # ties
    res = text_guided(
        scores, layout=lay, keep_ratio=0.2, layer=1, num_layers=4, per=per, backend=backend
    )
    assert res.keep_from_layer == 2
    want = []
    for b, p in enumerate(ps):
        segs = [
            [
                (float(scores[b, sl.start + 1 + i]), (f, i))
                for i in range(len(range(sl.start, sl.stop)) - 2)
            ]
            for f, sl in enumerate(p.vision_slices)
        ]
        if per == "video":
            items = [it for seg in segs for it in seg]
            want.append(topk_loop(items, k_of(0.2, len(items))))
        else:
            want.append(set().union(*[topk_loop(seg, k_of(0.2, len(seg))) for seg in segs]))
    assert kept_patches(res, ps) == want


def test_query_rows() -> None:
    lay = TokenLayout.from_token_types(
        [torch.tensor([0] + [1] * 18 + [0, 0, 0]), torch.tensor([0, 0])], 18
    )
    last = query_rows(lay, "last")
    assert last[0].nonzero().flatten().tolist() == [21] and last[
        1
    ].nonzero().flatten().tolist() == [1]
    text = query_rows(lay, "text")
    assert text[0].nonzero().flatten().tolist() == [19, 20, 21]
    assert text[1].nonzero().flatten().tolist() == [0, 1]


# ---- errors and policy objects --------------------------------------------------------------


def test_bad_input_errors() -> None:
    cfg, ps = prompts(None, (2,))
    tpf = cfg.tokens_per_frame
    types = [p.token_type_ids for p in ps]
    lay = TokenLayout.from_token_types(types, tpf)
    emb = torch.randn(2, tpf, 8)
    for bad in (0.0, 1.01, -1):
        with pytest.raises(ValueError, match="keep_ratio"):
            temporal(emb, types, tokens_per_frame=tpf, keep_ratio=bad)
        with pytest.raises(ValueError, match="keep_ratio"):
            TextGuided(bad).validate(4)
    with pytest.raises(TypeError, match="keep_ratio"):
        salient(torch.rand(2, tpf - 2), types, tokens_per_frame=tpf, keep_ratio=True)
    for layer in (-1, 3, 4):
        with pytest.raises(ValueError, match="layer"):
            text_guided(
                torch.rand(lay.role.shape), layout=lay, keep_ratio=0.5, layer=layer, num_layers=4
            )
        with pytest.raises(ValueError, match="layer"):
            TextGuided(0.5, layer=layer).validate(4)
    with pytest.raises(TypeError, match="layer"):
        TextGuided(0.5, layer=1.0).validate(4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not asked for attention scores"):
        text_guided(None, layout=lay, keep_ratio=0.5, layer=1, num_layers=4)
    with pytest.raises(ValueError, match="CLS attention"):
        salient(None, layout=lay, keep_ratio=0.5)
    with pytest.raises(ValueError, match="needs vision_embeds"):
        salient(torch.rand(2, tpf - 2), layout=lay, keep_ratio=0.5, merge=True)
    with pytest.raises(ValueError, match="needs cls_scores"):
        Salient(0.5)(lay, cls_scores=None)
    with pytest.raises(ValueError, match="needs lm_scores"):
        TextGuided(0.5, layer=1)(lay, num_layers=4)
    with pytest.raises(ValueError, match="rows"):
        temporal(torch.randn(3, tpf, 8), types, tokens_per_frame=tpf, keep_ratio=0.5)
    with pytest.raises(ValueError, match="per"):
        temporal(emb, types, tokens_per_frame=tpf, keep_ratio=0.5, per="clip")
    with pytest.raises(ValueError, match="must be the last"):
        Compose((TextGuided(0.5, layer=1), Temporal(0.5))).validate(4)
    Compose((Temporal(0.5), Salient(0.5, merge=True), TextGuided(0.5, layer=2))).validate(4)
    res = Temporal(0.5)(lay, vision_embeds=emb)
    assert res.policy == "temporal"
    other = TextGuided(0.5, layer=1)(lay, num_layers=4, lm_scores=torch.rand(lay.role.shape))
    with pytest.raises(ValueError, match="lengths"):
        compose(res, other)  # text-guided was computed on the unpruned sequence


def test_policy_fields_are_checked_when_built() -> None:
    """Bad fields fail at construction, naming the field (NaN and inf included)."""
    cases = [
        (lambda: Salient(0.5, merge="no"), TypeError, "merge"),
        (lambda: Salient(0.5, merge=1), TypeError, "merge"),
        (lambda: Temporal(float("nan")), ValueError, "keep_ratio"),
        (lambda: Temporal(float("inf")), ValueError, "keep_ratio"),
        (lambda: TextGuided(float("-inf")), ValueError, "keep_ratio"),
        (lambda: Salient("0.5"), TypeError, "keep_ratio"),
        (lambda: Temporal(0.5, per="clip"), ValueError, "per"),
        (lambda: TextGuided(0.5, layer=-1), ValueError, "layer"),
        (lambda: TextGuided(0.5, layer=True), TypeError, "layer"),
        (lambda: TextGuided(0.5, query="all"), ValueError, "query"),
        (lambda: Compose(()), ValueError, "policies"),
        (lambda: Compose((Temporal(0.5), "half")), TypeError, r"policies\[1\]"),
    ]
    for make, exc, field in cases:
        with pytest.raises(exc, match=field):
            make()


def test_policies_declare_where_they_run_and_what_they_need() -> None:
    for p in (Temporal(0.5), Salient(0.5, merge=True), TextGuided(0.5, layer=1)):
        assert isinstance(p, PrunePolicy)
    assert Temporal(0.5).where == Salient(0.5).where == BEFORE_LM
    assert TextGuided(0.5).where == IN_LM
    assert Temporal(0.5).needs == ("vision_embeds",)
    assert Salient(0.5).needs == ("cls_scores",)
    assert Salient(0.5, merge=True).needs == ("cls_scores", "vision_embeds")
    assert TextGuided(0.5).needs == ("lm_scores",)
    before, lm = plan_stages(Compose((Temporal(0.5), Salient(0.4), TextGuided(0.3, layer=1))), 4)
    assert [type(p) for p in before] == [Temporal, Salient] and isinstance(lm, TextGuided)
    assert plan_stages(TextGuided(0.5, layer=1), 4) == ([], TextGuided(0.5, layer=1))
    assert plan_stages(None, 4) == ([], None)
    with pytest.raises(ValueError, match="layer"):
        plan_stages(TextGuided(0.5, layer=3), 4)  # scores at 3, nothing left to drop from
    with pytest.raises(TypeError, match="prune"):
        plan_stages(0.5, 4)


def _layout_and_feats(seed: int, frames=(2, 0, 3, 1)):
    cfg, ps = prompts(None, frames)
    lay = TokenLayout.from_token_types([p.token_type_ids for p in ps], cfg.tokens_per_frame)
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(lay.num_frames, cfg.tokens_per_frame, 8, generator=g)
    counts = TokenCounts.unpruned(
        [len(p) for p in ps], [int(p.token_type_ids.sum()) for p in ps], cfg.tokens_per_frame
    )
    return lay, feats, counts, g


@pytest.mark.parametrize("first", ["video", "frame"])
@pytest.mark.parametrize("second", ["video", "frame"])
def test_kept_counts_are_predicted_from_the_layout(seed, first, second) -> None:
    """`PrunePolicy.kept` gives the counts the selection keeps, without the scores: exactly,
    except a per-frame stage after a per-video one (the frames' split is the scores'), where it
    says so (None) and `TokenCounts.from_layout` reads the counts instead."""
    lay, feats, counts, g = _layout_and_feats(seed)
    assert counts == TokenCounts.from_layout(lay) and counts.lengths == tuple(lay.lengths.tolist())
    t = Temporal(0.4, per=first)
    res = t(lay, vision_embeds=feats)
    after = t.kept(counts)
    assert after.lengths == tuple(res.kept_per_sequence.tolist())
    assert after == TokenCounts.from_layout(res.layout_after) or (
        first == "video" and after.patches == TokenCounts.from_layout(res.layout_after).patches
    )
    lay2 = res.layout_after
    tg = TextGuided(0.3, layer=0, per=second)
    res2 = tg(lay2, num_layers=2, lm_scores=torch.rand(lay2.role.shape, generator=g))
    predicted = tg.kept(after)
    if first == "video" and second == "frame":
        assert predicted is None
        predicted = tg.kept(TokenCounts.from_layout(lay2))
    assert predicted.lengths == tuple(res2.kept_per_sequence.tolist())
    assert predicted.vision == tuple((res2.layout_after.vision.sum(1)).tolist())
