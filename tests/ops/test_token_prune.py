"""token_prune kernels: Triton vs the reference (interpreter on CPU), the reference vs fp64
oracles and published-rule loops, the keep-count rule, compaction invariants, bad input, compile.
GPU tests (bf16, full size) are marked ``gpu``."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from haic_kernels.backends import BackendUnavailable
from haic_kernels.ops.token_prune.api import (
    compact,
    frame_cosine_scores,
    gather_rows,
    keep_counts,
    merge_weighted,
    nearest_kept,
    segment_topk,
)
from haic_kernels.ops.token_prune.reference import (
    frame_cosine_scores_reference,
    merge_weighted_reference,
    nearest_kept_reference,
)
from haic_kernels.testing import assert_parity
from tests._emulation import run_emulation

HAS_CUDA = torch.cuda.is_available()
DEV = "cuda" if HAS_CUDA else "cpu"
FAST = ["triton"]
CPU_DTYPES = [torch.float32, torch.float16]


def _prev(cu: list[int]) -> torch.Tensor:
    f = cu[-1]
    prev = torch.arange(f) - 1
    for a, b in itertools.pairwise(cu):
        if b > a:
            prev[a] = -1
    return prev


# ---- scoring ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape,cu", [((5, 16, 40), [0, 2, 2, 5]), ((3, 7, 129), None)])
def test_frame_cosine_parity(seed, poison_outputs, dtype, shape, cu) -> None:
    x = torch.randn(shape, dtype=dtype, device=DEV)
    cu_t = None if cu is None else torch.tensor(cu, device=DEV)
    prev = _prev(cu if cu is not None else [0, shape[0]]).to(DEV)
    fast = frame_cosine_scores(x, cu_frames=cu_t, backend="triton")
    ref = frame_cosine_scores_reference(x.double(), prev, math.inf, acc=torch.float64)
    same = frame_cosine_scores_reference(x, prev, math.inf, acc=x.dtype)
    first = prev < 0
    assert torch.isinf(fast[first]).all() and fast[first].gt(0).all()
    # Independent oracle: F.cosine_similarity (fp64) on the non-first frames.
    xd = x.double()
    oracle = 1 - torch.nn.functional.cosine_similarity(xd[1:], xd[:-1], dim=-1)
    assert torch.allclose(ref[1:][~first[1:]], oracle[~first[1:]].float(), atol=1e-6)
    assert_parity(fast[~first], same[~first].to(torch.float32), ref[~first], what="cosine")


def test_frame_cosine_reads_strided_patch_rows(seed, poison_outputs) -> None:
    """The patch rows of adapter output [F, N+2, D] are scored in place (no copy)."""
    emb = torch.randn(4, 11, 37, device=DEV)
    cu = torch.tensor([0, 1, 4], device=DEV)
    fast = frame_cosine_scores(emb[:, 1:-1], cu_frames=cu, backend="triton")
    want = frame_cosine_scores(emb[:, 1:-1].contiguous(), cu_frames=cu, backend="torch")
    torch.testing.assert_close(fast, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_nearest_kept_matches_reference(seed, poison_outputs, dtype) -> None:
    x = torch.randn(4, 21, 33, dtype=dtype, device=DEV)
    keep = torch.rand(4, 21, device=DEV) < 0.3
    keep[2] = False  # a frame with nothing kept -> -1
    keep[0, 0] = True
    fast = nearest_kept(x, keep, backend="triton")
    ref = nearest_kept_reference(x.float(), keep)
    assert fast.dtype == torch.int32
    assert (fast[2] == -1).all()
    # Equal indices, or (fp16 rounding) a target whose cosine ties the best within fp32 noise.
    xn = torch.nn.functional.normalize(x.double(), dim=-1)
    cos = xn @ xn.transpose(1, 2)
    diff = fast != ref
    if diff.any():
        f, i = diff.nonzero(as_tuple=True)
        got = cos[f, i, fast[f, i].long()]
        want = cos[f, i, ref[f, i].long()]
        assert torch.allclose(got, want, atol=1e-3), (got, want)
    if dtype == torch.float32:
        assert torch.equal(fast, ref)
    kept = keep.nonzero(as_tuple=True)
    assert (fast[kept] == kept[1].int()).all()


def test_nearest_kept_ties_go_to_lower_index(seed) -> None:
    # Parallel vectors with exactly representable dots and norms: every cosine is exactly 1.
    base = torch.tensor([1.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]).view(1, 1, 8)
    x = base.repeat(1, 6, 1) * torch.tensor([1.0, 2.0, 4.0, 1.0, 8.0, 0.5]).view(1, 6, 1)
    keep = torch.tensor([[False, True, False, True, True, False]])
    for b in ("torch", "triton"):
        out = nearest_kept(x, keep, backend=b)
        assert out.tolist() == [[1, 1, 1, 3, 4, 1]], b


# ---- selection ----------------------------------------------------------------------------


def _topk_loop(scores: list[float], cu: list[int], ks: list[int]) -> list[bool]:
    """The published rule, plainly: per segment, sort (score desc, index asc), keep the first k."""
    keep = [False] * len(scores)
    for g in range(len(ks)):
        idx = list(range(cu[g], cu[g + 1]))
        idx.sort(key=lambda i: (-scores[i], i))
        for i in idx[: ks[g]]:
            keep[i] = True
    return keep


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_segment_topk_ragged_with_ties(seed, backend) -> None:
    lens = [0, 1, 5, 130, 64, 3]
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    # Few distinct values: many ties; plus +inf and -inf.
    s = torch.randint(0, 4, (cu[-1],)).float()
    s[7] = math.inf
    s[8] = -math.inf
    ks = [0, 1, 2, 65, 64, 0]
    out = segment_topk(
        s.to(DEV), torch.tensor(cu, device=DEV), torch.tensor(ks, device=DEV), backend=backend
    )
    assert out.tolist() == _topk_loop(s.tolist(), cu, ks)


def test_keep_counts_rule() -> None:
    lens = torch.tensor([0, 1, 10, 64, 64, 16])
    assert keep_counts(lens, 0.1).tolist() == [0, 1, 1, 7, 7, 2]
    assert keep_counts(lens, 1.0).tolist() == lens.tolist()  # identity
    assert keep_counts(lens, 0.25).tolist() == [0, 1, 3, 16, 16, 4]
    # A ratio that rounds to zero tokens in a frame keeps one (ceil, at least 1).
    assert keep_counts(lens, 0.001).tolist() == [0, 1, 1, 1, 1, 1]
    assert keep_counts(lens, 0.001, min_keep=0).tolist() == [0, 1, 1, 1, 1, 1]
    for bad in (0.0, -0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="keep_ratio"):
            keep_counts(lens, bad)
    with pytest.raises(TypeError, match="keep_ratio"):
        keep_counts(lens, "0.5")  # type: ignore[arg-type]


# ---- compaction ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", *FAST])
def test_compact_padded_and_packed(seed, backend, poison_outputs) -> None:
    b, s, d = 3, 11, 5
    h = torch.randn(b, s, d, device=DEV)
    keep = torch.rand(b, s, device=DEV) < 0.5
    keep[1] = False
    keep[0, 0] = True
    types = torch.randint(0, 2, (b, s), device=DEV)
    pos = torch.arange(s, device=DEV).expand(b, s) * 3
    kv = torch.randn(b, s, 2, 3, device=DEV, dtype=torch.float16)
    c = compact(h, keep, token_type_ids=types, position_ids=pos, kv=[kv], backend=backend)
    assert torch.equal(c.hidden, h[keep])
    assert torch.equal(c.kv[0], kv[keep])
    assert torch.equal(c.token_type_ids, types[keep]) and torch.equal(c.position_ids, pos[keep])
    counts = keep.sum(1)
    assert c.cu_seqlens.dtype == torch.int32
    assert c.cu_seqlens.tolist() == [0, *counts.cumsum(0).tolist()]
    assert c.max_seqlen == int(counts.max())
    # Packed input with cu_seqlens: compact again (a second stage on varlen rows).
    keep2 = torch.rand(c.hidden.shape[0], device=DEV) < 0.5
    c2 = compact(c.hidden, keep2, cu_seqlens=c.cu_seqlens, backend=backend)
    assert torch.equal(c2.hidden, c.hidden[keep2])
    seg = torch.repeat_interleave(torch.arange(b, device=DEV), counts)
    per = torch.bincount(seg[keep2], minlength=b)
    assert c2.cu_seqlens.tolist() == [0, *per.cumsum(0).tolist()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.int64, torch.bool])
def test_gather_rows_any_dtype(seed, dtype) -> None:
    x = (torch.randn(9, 3, 5) * 10).to(dtype)
    idx = torch.tensor([8, 0, 0, 4])
    assert torch.equal(gather_rows(x, idx, backend="triton"), x[idx])
    x3 = torch.randn(7, 3).half()  # 6-byte rows: the byte path
    assert torch.equal(gather_rows(x3, idx[1:], backend="triton"), x3[idx[1:]])


# ---- merge --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_merge_weighted_parity(seed, poison_outputs, dtype) -> None:
    f, n, d = 3, 13, 150
    x = torch.randn(f, n, d, dtype=dtype)
    keep = torch.rand(f, n) < 0.4
    keep[:, 0] = True
    target = nearest_kept_reference(x.float(), keep)
    sizes = torch.rand(f, n) + 0.5
    out, new_sizes = merge_weighted(x, target, sizes, backend="triton")
    ref, ref_sizes = merge_weighted_reference(x.double(), target, sizes.double(), torch.float64)
    same, _ = merge_weighted_reference(x, target, sizes, acc=dtype)
    assert_parity(out, same, ref, what="merge")
    assert torch.allclose(new_sizes, ref_sizes.float())
    # Sizes are conserved per frame and the merged mean is size-weighted (explicit loop).
    assert torch.allclose(new_sizes.sum(1), sizes.sum(1))
    fr, i = keep.nonzero()[0].tolist()
    src = (target[fr] == i).nonzero().squeeze(1)
    want = (x[fr, src].double() * sizes[fr, src, None].double()).sum(0) / sizes[fr, src].sum()
    assert torch.allclose(out[fr, i].double(), want, atol=2e-3 if dtype == torch.float16 else 1e-5)
    assert torch.equal(out[~keep], x[~keep])  # non-destinations are copied
    assert (new_sizes[~keep] == 0).all()


# ---- errors, autograd, compile ------------------------------------------------------------


def test_bad_input_errors() -> None:
    x = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="x"):
        frame_cosine_scores(torch.randn(4, 8))
    with pytest.raises(TypeError, match="x"):
        frame_cosine_scores(x.int())
    with pytest.raises(ValueError, match="cu_frames"):
        frame_cosine_scores(x, cu_frames=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="keep"):
        nearest_kept(x, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="k"):
        segment_topk(torch.randn(4), torch.tensor([0, 4]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="NaN"):
        segment_topk(torch.tensor([1.0, math.nan]), torch.tensor([0, 2]), torch.tensor([1]))
    with pytest.raises(ValueError, match="cu_seqlens"):
        compact(torch.randn(4, 3), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="target"):
        merge_weighted(x, torch.tensor([[0, 0, 1, 3], [0, 0, 0, 0]]))  # 1 is no destination
    with pytest.raises(ValueError, match="index"):
        gather_rows(x, torch.tensor([2]))
    with pytest.raises(RuntimeError, match="no backward"):
        frame_cosine_scores(x.requires_grad_())
    with pytest.raises(ValueError, match="backend"):
        frame_cosine_scores(torch.randn(2, 4, 8), backend="nope")
    if not HAS_CUDA:
        with pytest.raises(BackendUnavailable):
            segment_topk(torch.randn(4), torch.tensor([0, 4]), torch.tensor([1]), backend="cuda")


def test_torch_compile_fullgraph(seed) -> None:
    x = torch.randn(3, 8, 16)
    prev = torch.tensor([-1, 0, 1], dtype=torch.int32)
    keep = torch.rand(3, 8) < 0.5

    def fn(x, prev, keep):
        s = torch.ops.haic_kernels.token_prune_frame_cosine(x, prev, math.inf, "torch")
        t = torch.ops.haic_kernels.token_prune_nearest_kept(x, keep, "torch")
        return s, t

    got = torch.compile(fn, fullgraph=True, backend="eager")(x, prev, keep)
    want = fn(x, prev, keep)
    assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0])


def test_segment_topk_cuda_kernel_host_emulation(tmp_path) -> None:
    """csrc/token_select.cu compiled by g++ against the csrc/emu shims (threads as CUDA threads,
    a barrier as __syncthreads), checked against a host loop inside the driver."""
    out = run_emulation(tmp_path, "token_select.cu", "token_select_emu.cpp", timeout=120)
    assert "0 failed" in out, out


def _ext_has_select() -> bool:
    try:
        import haic_kernels._C as C
    except ImportError:
        return False
    return hasattr(C, "segment_topk_f32")


@pytest.mark.skipif(not _ext_has_select(), reason="haic_kernels._C is not built")
@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"num_tokens": -1}, "num_tokens must be >= 0"),
        ({"max_seqlen": -1}, "must be >= 0"),
        ({"num_segments": -2}, "must be >= 0"),
        ({"num_tokens": 1 << 31}, "num_tokens must be < 2"),
        ({"k_ptr": 0}, "k_ptr must be non-null"),
    ],
)
def test_segment_topk_binding_checks_arguments(over, words) -> None:
    """These checks run before any CUDA call, so they are safe without a GPU."""
    import haic_kernels._C as C

    kw = dict(scores_ptr=1 << 20, cu_seqlens_ptr=2 << 20, k_ptr=3 << 20, keep_ptr=4 << 20,
              num_segments=2, max_seqlen=8, num_tokens=12, stream=0)  # fmt: skip
    kw.update(over)
    with pytest.raises(ValueError, match=words):
        C.segment_topk_f32(**kw)


def test_segment_topk_binding_empty_is_a_no_op() -> None:
    if not _ext_has_select():
        pytest.skip("haic_kernels._C is not built")
    import haic_kernels._C as C

    for empty in ({"num_segments": 0}, {"num_tokens": 0}):
        kw = dict(scores_ptr=0, cu_seqlens_ptr=0, k_ptr=0, keep_ptr=0, num_segments=2,
                  max_seqlen=8, num_tokens=12, stream=0)  # fmt: skip
        kw.update(empty)
        assert C.segment_topk_f32(**kw) is None  # returns before touching a pointer


# ---- GPU (bf16, full size) ----------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 8])
def test_gpu_full_size_bf16(seed, batch) -> None:
    f, n, d = 24 * batch, 64, 4096
    x = torch.randn(f, n, d, device="cuda", dtype=torch.bfloat16)
    cu = torch.arange(0, f + 1, 24, device="cuda")
    prev = torch.tensor(_prev(cu.tolist()).tolist(), device="cuda", dtype=torch.int32)
    fast = frame_cosine_scores(x, cu_frames=cu, backend="triton")
    ref = frame_cosine_scores_reference(x.double(), prev, math.inf, acc=torch.float64)
    same = frame_cosine_scores_reference(x, prev, math.inf, acc=torch.bfloat16)
    ok = prev >= 0
    assert_parity(fast[ok], same[ok].float(), ref[ok], what="cosine bf16")
    scores = torch.randn(f * n, device="cuda")
    cu_v = torch.arange(0, f * n + 1, 24 * n, device="cuda", dtype=torch.int32)
    k = torch.full((batch,), 24 * n // 4, device="cuda", dtype=torch.int32)
    keep = segment_topk(scores, cu_v, k, backend="triton")
    assert torch.equal(keep, segment_topk(scores, cu_v, k, backend="torch"))
    assert torch.equal(keep, segment_topk(scores, cu_v, k, backend="cuda"))
    # Per frame, with ties (few distinct values).
    ties = torch.randint(0, 3, (f * n,), device="cuda").float()
    cu_f = torch.arange(0, f * n + 1, n, device="cuda", dtype=torch.int32)
    k_f = torch.full((f,), 16, device="cuda", dtype=torch.int32)
    want = segment_topk(ties, cu_f, k_f, backend="torch")
    for b in ("triton", "cuda"):
        assert torch.equal(segment_topk(ties, cu_f, k_f, backend=b), want), b
    hid = torch.randn(batch, 24 * n, d, device="cuda", dtype=torch.bfloat16)
    c = compact(hid, keep.view(batch, -1), backend="triton")
    assert torch.equal(c.hidden, hid[keep.view(batch, -1)])
    kp = torch.rand(f, n, device="cuda") < 0.25
    kp[:, 0] = True
    tgt = nearest_kept(x, kp, backend="triton")
    assert (tgt >= 0).all() and kp.gather(1, tgt.long()).all()
    out, sz = merge_weighted(x, tgt, backend="triton")
    ref_m, _ = merge_weighted_reference(
        x.double(), tgt, torch.ones(f, n, device="cuda"), torch.float64
    )
    same_m, _ = merge_weighted_reference(x, tgt, torch.ones(f, n, device="cuda"), torch.bfloat16)
    assert_parity(out, same_m, ref_m, what="merge bf16")
    assert torch.allclose(sz.sum(1), torch.full((f,), float(n), device="cuda"))
