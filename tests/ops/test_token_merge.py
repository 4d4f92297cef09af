"""token_merge ops: bipartite_match, merge_packed, patch_difference (ops/token_merge).

The oracles here are written independently of reference.py (brute force over explicit pairs,
float64 sums); ties are built from exactly representable vectors so every implementation sees
exactly equal similarities.
"""

from __future__ import annotations

import pytest
import torch

from haic_kernels.ops.token_merge import (
    NO_PREVIOUS,
    bipartite_match,
    max_merges,
    merge_packed,
    patch_difference,
)
from haic_kernels.ops.token_merge.api import merge_step_unchecked
from tests._triton import needs_triton_cpu

# Triton under the interpreter (CPU); on a CUDA machine these CPU tests skip it (stated reason).
BACKENDS = ["torch", pytest.param("triton", marks=needs_triton_cpu)]


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)


def _brute_match(metric: torch.Tensor, lengths: list[int], r: list[int]) -> torch.Tensor:
    """Every (A, B) pair scored one by one in float64; stable choices by explicit keys."""
    target = list(range(metric.shape[0]))
    lo = 0
    for n, rf in zip(lengths, r):
        best = []
        for a in range(2, n, 2):
            cands = []
            for b in range(1, n, 2):
                x, y = metric[lo + a].double(), metric[lo + b].double()
                cos = float((x * y).sum() / max(float((x * x).sum() * (y * y).sum()), 1e-16) ** 0.5)
                cands.append((-cos, b))
            neg, b = min(cands)  # highest cosine, then lowest b
            best.append((neg, a, b))
        for _, a, b in sorted(best)[:rf]:  # highest match, then lowest a
            target[lo + a] = lo + b
        lo += n
    return torch.tensor(target)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bipartite_match_ragged_frames(seed, backend):
    lengths = [17, 9, 2, 1, 24, 65]  # odd, even, CLS + one B, CLS only, longer
    metric = torch.randn(sum(lengths), 16)
    r = [max_merges(n) if i % 2 else min(3, max_merges(n)) for i, n in enumerate(lengths)]
    got = bipartite_match(metric, _cu(lengths), torch.tensor(r), backend=backend)
    assert torch.equal(got, _brute_match(metric, lengths, r))
    merged = got != torch.arange(got.shape[0])
    lo = 0
    for n, rf in zip(lengths, r):
        seg = merged[lo : lo + n]
        assert int(seg.sum()) == rf and not bool(seg[0])  # CLS never merges
        assert not bool(seg[1::2].any())  # B rows are targets, never sources
        lo += n


@pytest.mark.parametrize("backend", BACKENDS)
def test_bipartite_match_ties_go_to_the_lower_row(backend):
    # Unit vectors with entries in {0, 1}: every cosine is exactly 0 or 1 on every backend.
    e = torch.eye(4)
    # rows: CLS, B1=e0, A2=e0, B3=e0, A4=e1, B5=e1, A6=e0 : A2 and A6 tie with B1 and B3 (cos 1),
    # A4 matches B5 (cos 1): three A rows with an equal best score.
    metric = torch.stack([e[3], e[0], e[0], e[0], e[1], e[1], e[0]])
    got = bipartite_match(metric, _cu([7]), torch.tensor([2]), backend=backend)
    # best match: the lower B (row 1 for A2 and A6); top-2 of three equal scores: rows 2 and 4.
    assert got.tolist() == [0, 1, 1, 3, 5, 5, 6]


def test_bipartite_match_refuses_too_many_merges():
    metric = torch.randn(9, 4)
    with pytest.raises(ValueError, match="r: merges per frame"):
        bipartite_match(metric, _cu([9]), torch.tensor([5]))  # (9 - 1) // 2 = 4 allowed
    with pytest.raises(ValueError, match="r: expected 2 entries"):
        bipartite_match(metric, _cu([4, 5]), torch.tensor([1]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_merge_packed_weighted_means(seed, backend, dtype):
    lengths = [11, 7]
    t = sum(lengths)
    x = torch.randn(t, 24).to(dtype)
    sizes = torch.randint(1, 5, (t,)).float()
    target = bipartite_match(torch.randn(t, 8), _cu(lengths), torch.tensor([4, 2]))
    out, new_sizes, row = merge_packed(x, sizes, target, kept=t - 6, backend=backend)
    stay = (target == torch.arange(t)).nonzero().squeeze(1)
    assert out.shape == (t - 6, 24) and torch.equal(row[stay], torch.arange(t - 6))
    for i, s in enumerate(stay.tolist()):
        members = (target == s).nonzero().squeeze(1)
        w = sizes[members].double()
        want = (x[members].double() * w[:, None]).sum(0) / w.sum()
        assert torch.equal(row[members], torch.full_like(members, i))
        tol = 1e-6 if dtype == torch.float32 else 1e-3
        torch.testing.assert_close(out[i].double(), want, rtol=tol, atol=tol)
        assert float(new_sizes[i]) == float(w.sum())
        if members.numel() == 1:  # nothing merged in: the row comes back bit for bit
            assert torch.equal(out[i], x[s])
    assert float(new_sizes.sum()) == float(sizes.sum())


def test_merge_packed_checks_targets():
    x = torch.randn(4, 3)
    ones = torch.ones(4)
    with pytest.raises(ValueError, match="target: every target must be a row that stays"):
        merge_packed(x, ones, torch.tensor([0, 2, 3, 3]))  # row 1 -> 2, but 2 -> 3
    with pytest.raises(ValueError, match="kept: 3 given"):
        merge_packed(x, ones, torch.tensor([0, 0, 2, 2]), kept=3)
    with pytest.raises(ValueError, match="sizes: every size must be finite and > 0"):
        merge_packed(x, torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.arange(4))


def test_patch_difference_nothing_and_everything_repeats(seed):
    s, p = 28, 14
    a = torch.randint(0, 256, (3, s, s, 3), dtype=torch.uint8)
    nothing = patch_difference(a, p)  # independent random frames: every patch changes
    assert nothing[0].tolist() == [NO_PREVIOUS] * 4
    assert bool((nothing[1:] > 128).all())
    same = a[:1].expand(3, -1, -1, -1).contiguous()
    everything = patch_difference(same, p)
    assert everything[1:].eq(0).all() and everything[0].eq(NO_PREVIOUS).all()
    # One pixel of patch (1, 0) of frame 2 moves by 7: only that patch scores, and scores 7.
    b = same.clone()
    b[2, 20, 3, 1] = (int(b[2, 20, 3, 1]) + 7) % 256 if int(b[2, 20, 3, 1]) < 249 else 0
    d = patch_difference(b, p)
    want = abs(int(b[2, 20, 3, 1]) - int(same[2, 20, 3, 1]))
    assert d[2].tolist() == [0, 0, want, 0] and d[1].eq(0).all()


def test_patch_difference_never_crosses_videos(seed):
    a = torch.randint(0, 256, (4, 14, 14, 3), dtype=torch.uint8)
    a[2] = a[1]  # frame 2 repeats frame 1, but starts the second video
    d = patch_difference(a, 14, cu_frames=torch.tensor([0, 2, 4]))
    assert d[:, 0].tolist()[0] == NO_PREVIOUS and int(d[2, 0]) == NO_PREVIOUS
    with pytest.raises(ValueError, match="frames: expected square frames"):
        patch_difference(a[:, :, :10], 14)


@needs_triton_cpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("with_sizes", [False, True])
def test_merge_step_triton_equals_the_composed_ops(seed, dtype, with_sizes):
    """The tower's fused step (Triton: match with the keys' head mean, plan, merge) against the
    public ops composed on the torch backend: the same merged rows and sizes bit for bit (one
    fp32 sum per row in row order on both), and the unmerge map moved exactly
    (``out_row[target[rows]]``)."""
    lengths = [17, 9, 2, 1, 24, 65]
    t, width = sum(lengths), 24
    cu = _cu(lengths)
    r = [min(max_merges(m), 3 + 5 * (i % 2)) for i, m in enumerate(lengths)]
    h = torch.randn(t, width).to(dtype)
    # the keys as the tower hands them over: a strided view of a fused QKV output
    keys = torch.randn(t, 3, 4, 16).to(dtype).unbind(1)[1]
    sizes = torch.randint(1, 5, (t,)).float() if with_sizes else None
    # rows: each frame's positions point into the frame (some twice, as a dropped patch's does)
    positions = 70
    rows = torch.stack([lo + torch.randint(0, m, (positions,)) for lo, m in
                        zip(cu[:-1].tolist(), lengths)])  # fmt: skip
    new_len = [m - k for m, k in zip(lengths, r)]
    cu_new, r32 = _cu(new_len), torch.tensor(r, dtype=torch.int32)
    step = (cu, cu_new, r32, rows, max(lengths), sum(new_len), max(new_len))
    got = merge_step_unchecked(h, keys, sizes, *step, "triton")
    target = bipartite_match(keys.float().mean(1), cu, torch.tensor(r), backend="torch")
    ones = torch.ones(t) if sizes is None else sizes
    want_x, want_sizes, _ = merge_packed(h, ones, target, backend="torch")
    stay = target == torch.arange(t)
    out_row = torch.cumsum(stay.long(), 0) - 1
    assert torch.equal(got[0], want_x) and torch.equal(got[1], want_sizes)
    assert torch.equal(got[2], out_row[target[rows]])
    for a, b in zip(got, merge_step_unchecked(h, keys, sizes, *step, "torch")):
        assert torch.equal(a, b)
