"""haic_kernels.tokens: position ids from token types and vision-expert routing (the release's
rules), for rows [B, S], one sequence [S] and packed sequences [T] with cu_seqlens."""

from __future__ import annotations

import random

import pytest
import torch

from haic_kernels.constants import LANGUAGE_TOKEN_TYPE as L
from haic_kernels.constants import VISION_TOKEN_TYPE as V
from haic_kernels.models.cogvlm2 import ByteTokenizer, KVCache, build_prompt, get_config
from haic_kernels.tokens import build_position_ids, vision_expert_mask


def positions_by_runs(types: list[int]) -> list[int]:
    """The spec'd rule, written per run instead of per token (independent of the tensor code).

    Language token after position p: p+1. A run of r vision tokens after position p:
    r=1 -> [p+1]; r=2 -> [p+1, p+2]; r>=3 -> [p+1, p+2 (r-2 times), p+3] (its first and last
    tokens count as language: boi/eoi). The first token of the sequence is at 0 (p = -1).
    """
    out: list[int] = []
    p = -1
    i = 0
    while i < len(types):
        if types[i] == L:
            p += 1
            out.append(p)
            i += 1
            continue
        j = i
        while j < len(types) and types[j] == V:
            j += 1
        r = j - i
        if r == 1:
            run = [p + 1]
        elif r == 2:
            run = [p + 1, p + 2]
        else:
            run = [p + 1] + [p + 2] * (r - 2) + [p + 3]
        out += run
        p = run[-1]
        i = j
    return out


def routing_by_loop(types: list[int]) -> list[bool]:
    return [types[i] == V and i + 1 < len(types) and types[i + 1] == V for i in range(len(types))]


def random_types(rng: random.Random, n: int) -> list[int]:
    """Runs of random lengths (1..9) alternating in type, starting with either type."""
    out: list[int] = []
    t = rng.choice([L, V])
    while len(out) < n:
        out += [t] * rng.randint(1, 9)
        t = V if t == L else L
    return out[:n]


def test_frame_between_language_tokens(seed: int) -> None:
    rng = random.Random(seed)
    before, tpf, after = rng.randint(1, 9), rng.randint(3, 70), rng.randint(1, 9)
    types = torch.tensor([L] * before + [V] * tpf + [L] * after)
    pos = build_position_ids(types)
    p = before - 1
    assert pos[before] == p + 1  # boi
    assert (pos[before + 1 : before + tpf - 1] == p + 2).all()  # every patch token
    assert pos[before + tpf - 1] == p + 3  # eoi
    assert pos[before + tpf] == p + 4  # next text token
    assert pos.tolist() == positions_by_runs(types.tolist())


def test_chat_template_uses_three_positions_per_frame() -> None:
    cfg = get_config("tiny", "video-chat")
    frames = 5
    prompt = build_prompt(ByteTokenizer(), "q?", frames, cfg)
    pos = build_position_ids(prompt.token_type_ids)
    for f, sl in enumerate(prompt.vision_slices):
        span = pos[sl]
        assert span.unique().numel() == 3, f"frame {f}"
        assert span[-1] - span[0] == 2
        # the frame index after it (one byte token for f < 10) is the next position
        assert pos[sl.stop] == span[-1] + 1
    # bos 0; frame f occupies 3 positions, its index one more
    assert pos[prompt.vision_slices[-1].stop] == 4 * frames


def test_base_template_whole_run_shares_positions() -> None:
    cfg = get_config("tiny", "video-base")
    frames = 4
    prompt = build_prompt(ByteTokenizer(), "describe", frames, cfg)
    pos = build_position_ids(prompt.token_type_ids)
    start, stop = prompt.vision_slices[0].start, prompt.vision_slices[-1].stop
    assert pos[start] == 1 and pos[stop - 1] == 3
    inner = pos[start + 1 : stop - 1]
    assert (inner == 2).all()  # every frame's patches (and inner boi/eoi) share one id
    assert pos[stop] == 4


def test_pruning_patch_tokens_keeps_ids(seed: int) -> None:
    rng = random.Random(seed)
    cfg = get_config("tiny", "video-chat")
    prompt = build_prompt(ByteTokenizer(), "why?", 3, cfg)
    types = prompt.token_type_ids
    pos = build_position_ids(types)
    keep = torch.ones_like(types, dtype=torch.bool)
    for sl in prompt.vision_slices:
        inner = list(range(sl.start + 1, sl.stop - 1))  # boi and eoi stay
        dropped = rng.sample(inner, rng.randint(0, len(inner) - 1))  # at least one patch stays
        keep[dropped] = False
    assert build_position_ids(types[keep]).tolist() == pos[keep].tolist()


def test_matches_independent_rule_on_random_sequences(seed: int) -> None:
    rng = random.Random(seed)
    batch = [random_types(rng, 97) for _ in range(6)]
    batch.append([V] * 97)
    batch.append([L] * 97)
    types = torch.tensor(batch)
    got = build_position_ids(types)
    assert got.dtype == torch.long
    for row, t in zip(got.tolist(), batch):
        assert row == positions_by_runs(t), f"seed {seed}, types {t}"
    single = build_position_ids(types[0])
    assert single.shape == (97,) and single.tolist() == got[0].tolist()


def test_positions_reject_bad_types() -> None:
    with pytest.raises(ValueError, match="token_type_ids"):
        build_position_ids(torch.tensor([[0, 2, 1]]))
    with pytest.raises(ValueError, match="token_type_ids"):
        build_position_ids(torch.zeros(1, 2, 3, dtype=torch.long))


def test_cache_continues_positions(seed: int) -> None:
    """Chunked numbering (cache) equals numbering the whole sequence at once."""
    rng = random.Random(seed)
    types = torch.tensor([random_types(rng, 60) for _ in range(3)])
    split = 40
    # a chunk may not start inside a vision run that the prefix ended in
    for b in range(types.shape[0]):
        if types[b, split - 1] == V and types[b, split] == V:
            types[b, split] = L
    full = build_position_ids(types)
    head = build_position_ids(types[:, :split])
    cache = KVCache([], [], last_position=head[:, -1], last_token_type=types[:, split - 1])
    tail = cache.continue_positions(types[:, split:])
    # with no vision run split across the boundary, chunked numbering is the one-shot numbering
    assert torch.equal(head, full[:, :split])
    assert torch.equal(tail, full[:, split:]), f"seed {seed}"
    bad = KVCache([], [], last_position=torch.tensor([3]), last_token_type=torch.tensor([V]))
    with pytest.raises(ValueError, match="vision"):
        bad.continue_positions(torch.tensor([[V, V, L]]))


# ----------------------------------------------------------------------------------- routing


def test_routing_mask_both_experts() -> None:
    types = torch.tensor([[L, V, V, V, L, V, V, L]])
    mask = vision_expert_mask(types)
    assert mask.dtype == torch.bool
    # the last vision token of each run goes to the language expert
    assert mask.tolist() == [[False, True, True, False, False, True, False, False]]


def test_routing_mask_edges() -> None:
    assert not vision_expert_mask(torch.zeros(2, 9, dtype=torch.long)).any()
    all_vis = vision_expert_mask(torch.ones(2, 9, dtype=torch.long))
    assert all_vis[:, :-1].all() and not all_vis[:, -1].any()  # last position: language
    assert vision_expert_mask(torch.ones(1, 1, dtype=torch.long)).tolist() == [[False]]


def test_routing_mask_random(seed: int) -> None:
    rng = random.Random(seed)
    batch = [random_types(rng, 50) for _ in range(4)]
    got = vision_expert_mask(torch.tensor(batch))
    for row, t in zip(got.tolist(), batch):
        assert row == routing_by_loop(t), f"seed {seed}"


def test_packed_sequences_follow_the_rules_per_sequence(seed: int) -> None:
    """Packed [T] with cu_seqlens (empty sequences included): each sequence numbered and routed
    on its own, as if it were alone (a sequence end is an end even when a vision run follows)."""
    rng = random.Random(seed)
    for _ in range(20):
        seqs = [random_types(rng, rng.choice([0, 1, 2, 5, 13])) for _ in range(rng.randint(1, 6))]
        packed = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
        cu = torch.tensor([0, *torch.tensor([len(s) for s in seqs]).cumsum(0).tolist()])
        pos = build_position_ids(packed, cu.to(torch.int32))
        mask = vision_expert_mask(packed, cu)
        assert pos.tolist() == [p for s in seqs for p in positions_by_runs(s)], seqs
        assert mask.tolist() == [m for s in seqs for m in routing_by_loop(s)], seqs
    with pytest.raises(ValueError, match="packed"):
        build_position_ids(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 3, 6]))
