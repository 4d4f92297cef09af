"""token_prune in Triton: cosine scores, nearest kept token, segment top-k, row gather, merge.

Runs on CUDA tensors, or on CPU tensors under the interpreter (TRITON_INTERPRET=1 set before this
module is imported). Imported lazily by api.py; never imports the reference. All reductions
accumulate in fp32. Launchers take already-validated, contiguous tensors.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Cosine scores: one program per (frame, 64 tokens) walking D in chunks of 64: 4096 elements of
# each operand per step, enough loads in flight to stream at D=4096 (memory-bound: 2 reads of x).
_COS_BLOCK_N = 64
_COS_BLOCK_D = 64
# Nearest kept token: one program per frame computes the whole N x N Gram matrix with tl.dot
# (N = 64 tokens per frame at full size; tl.dot needs tiles >= 16); D chunk 64 keeps the two
# [64, 64] operands and the accumulator in registers at 4 warps.
_NK_BLOCK_D = 64
# Segment top-k: rank of each element = how many of its segment beat it; 128 candidates x 128
# competitors per step (a 16k-element compare tile, cheap next to the loads for segments <= 1.6k).
_TOPK_BLOCK_I = 128
_TOPK_BLOCK_J = 128
# Row gather: 1024 columns per program (D=4096 -> 4 programs per row; 2 KiB bf16 per load).
_GATHER_BLOCK_W = 1024
# Merge: one program per (frame, 128 columns); it loops over the frame's N source rows.
_MERGE_BLOCK_D = 128
_NUM_WARPS = 4
_EPS2 = 1e-16  # COS_EPS**2 of the reference: the cosine's denominator floor


@triton.jit
def _frame_cosine_kernel(
    x_ptr,
    prev_ptr,
    out_ptr,
    n_tok,
    d,
    stride_f,
    stride_n,
    first_score,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # out[f, n] = 1 - <x[f,n], x[p,n]> / sqrt(max(|x[f,n]|^2 |x[p,n]|^2, eps^2)), p = prev[f];
    # first_score where p < 0.
    f = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_tok
    p = tl.load(prev_ptr + f)
    has_prev = p >= 0
    p_safe = tl.where(has_prev, p, f).to(tl.int64)
    base_a = f.to(tl.int64) * stride_f
    base_b = p_safe * stride_f
    dot = tl.zeros([BLOCK_N], dtype=tl.float32)
    na = tl.zeros([BLOCK_N], dtype=tl.float32)
    nb = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = row_ok[:, None] & (cols < d)[None, :]
        off = rows[:, None].to(tl.int64) * stride_n + cols[None, :]
        a = tl.load(x_ptr + base_a + off, mask=m, other=0.0).to(tl.float32)
        b = tl.load(x_ptr + base_b + off, mask=m, other=0.0).to(tl.float32)
        dot += tl.sum(a * b, axis=1)
        na += tl.sum(a * a, axis=1)
        nb += tl.sum(b * b, axis=1)
    score = 1.0 - dot / tl.sqrt(tl.maximum(na * nb, 1e-16))
    score = tl.where(has_prev, score, first_score)
    tl.store(out_ptr + f * n_tok + rows, score, mask=row_ok)


@triton.jit
def _nearest_kept_kernel(
    x_ptr,
    keep_ptr,
    out_ptr,
    n_tok,
    d,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr,
):
    # out[f, i] = argmax_{j kept} cos(x[f,i], x[f,j]) (first on ties), i if i is kept, -1 if
    # the frame keeps nothing.
    f = tl.program_id(0)
    idx = tl.arange(0, BLOCK_N)
    ok = idx < n_tok
    base = f.to(tl.int64) * n_tok * d
    gram = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    norm = tl.zeros([BLOCK_N], dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = ok[:, None] & (cols < d)[None, :]
        a = tl.load(x_ptr + base + idx[:, None].to(tl.int64) * d + cols[None, :], mask=m, other=0.0)
        af = a.to(tl.float32)
        norm += tl.sum(af * af, axis=1)
        if IEEE:  # fp32 inputs: no TF32 rounding, so ties and near-ties match the reference
            gram += tl.dot(af, tl.trans(af), input_precision="ieee")
        else:
            gram += tl.dot(a, tl.trans(a))
    # Same operation order as the reference: gram / sqrt(max(n_i * n_j, eps^2)).
    cos = gram / tl.sqrt(tl.maximum(norm[:, None] * norm[None, :], 1e-16))
    kept = tl.load(keep_ptr + f * n_tok + idx, mask=ok, other=0) != 0
    cos = tl.where(kept[None, :], cos, float("-inf"))
    best = tl.argmax(cos, axis=1, tie_break_left=True)
    any_kept = tl.max(kept.to(tl.int32), axis=0) > 0
    res = tl.where(kept, idx, best)
    res = tl.where(any_kept, res, -1)
    tl.store(out_ptr + f * n_tok + idx, res.to(tl.int32), mask=ok)


@triton.jit
def _segment_topk_kernel(
    scores_ptr,
    cu_ptr,
    k_ptr,
    keep_ptr,
    n_tokens,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    # keep[i] = #{j in seg : s_j > s_i or (s_j == s_i and j < i)} < k[seg]: a stable top-k
    # without sorting, one rank per element. The grid's second axis comes from max_seqlen, a
    # hint: the programs stride over longer segments, and segment bounds are clamped into
    # [0, n_tokens], so wrong metadata never reads or writes outside the buffers.
    g = tl.program_id(0)
    lo = tl.minimum(tl.maximum(tl.load(cu_ptr + g), 0), n_tokens)
    hi = tl.minimum(tl.maximum(tl.load(cu_ptr + g + 1), lo), n_tokens)
    kk = tl.load(k_ptr + g)
    for i0 in range(lo + tl.program_id(1) * BLOCK_I, hi, tl.num_programs(1) * BLOCK_I):
        i = i0 + tl.arange(0, BLOCK_I)
        i_ok = i < hi
        si = tl.load(scores_ptr + i, mask=i_ok, other=0.0)
        rank = tl.zeros([BLOCK_I], dtype=tl.int32)
        for j0 in range(lo, hi, BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            j_ok = j < hi
            sj = tl.load(scores_ptr + j, mask=j_ok, other=0.0)
            beats = (sj[None, :] > si[:, None]) | (
                (sj[None, :] == si[:, None]) & (j[None, :] < i[:, None])
            )
            beats = beats & j_ok[None, :]
            rank += tl.sum(beats.to(tl.int32), axis=1)
        tl.store(keep_ptr + i, (rank < kk).to(tl.int8), mask=i_ok)


@triton.jit
def _gather_rows_kernel(x_ptr, idx_ptr, out_ptr, width, n_src, BLOCK_W: tl.constexpr):
    # out[r, :] = x[idx[r], :]; the index is clamped into [0, n_src) (the range is asserted on
    # the GPU asynchronously: meanwhile the kernel stays inside x).
    r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    m = cols < width
    src = tl.minimum(tl.maximum(tl.load(idx_ptr + r).to(tl.int64), 0), n_src - 1)
    v = tl.load(x_ptr + src * width + cols, mask=m)
    tl.store(out_ptr + r.to(tl.int64) * width + cols, v, mask=m)


@triton.jit
def _merge_weighted_kernel(
    x_ptr,
    target_ptr,
    sizes_ptr,
    out_ptr,
    new_sizes_ptr,
    n_tok,
    d,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Destination i (target[i] == i): out[i] = sum_{j: target[j]==i} s_j x_j / sum s_j;
    # any other row is copied, its new size 0. Sources are visited in index order, so the
    # sum order is fixed (no atomics): the result is deterministic.
    f = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    c_ok = cols < d
    idx = tl.arange(0, BLOCK_N)
    ok = idx < n_tok
    base = f.to(tl.int64) * n_tok
    num = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    den = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j in range(0, n_tok):
        tj = tl.load(target_ptr + base + j)
        sj = tl.load(sizes_ptr + base + j)
        xj = tl.load(x_ptr + (base + j) * d + cols, mask=c_ok, other=0.0).to(tl.float32)
        w = tl.where(idx == tj, sj, 0.0)
        num += w[:, None] * xj[None, :]
        den += w
    tgt = tl.load(target_ptr + base + idx, mask=ok, other=-1)
    is_dest = tgt == idx
    m = ok[:, None] & c_ok[None, :]
    offs = (base + idx)[:, None].to(tl.int64) * d + cols[None, :]
    xi = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    y = tl.where(is_dest[:, None], num / tl.maximum(den, 1e-30)[:, None], xi)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)
    if tl.program_id(1) == 0:
        tl.store(new_sizes_ptr + base + idx, tl.where(is_dest, den, 0.0), mask=ok)


# ---- launchers --------------------------------------------------------------------------------


def frame_cosine_scores_triton(x, prev, out, first_score: float) -> None:
    """x [F, N, D] with stride(2) == 1 (e.g. the patch rows of [F, N+2, D] adapter output, no
    copy), prev int32 [F], out float32 [F, N]."""
    f, n, d = x.shape
    if f == 0 or n == 0:
        return
    grid = (f, triton.cdiv(n, _COS_BLOCK_N))
    _frame_cosine_kernel[grid](
        x,
        prev,
        out,
        n,
        d,
        x.stride(0),
        x.stride(1),
        float(first_score),
        BLOCK_N=_COS_BLOCK_N,
        BLOCK_D=_COS_BLOCK_D,
        num_warps=_NUM_WARPS,
    )


def nearest_kept_triton(x, keep_i8, out) -> None:
    """x [F, N, D] contiguous, keep_i8 int8 [F, N], out int32 [F, N]."""
    import torch

    f, n, d = x.shape
    if f == 0 or n == 0:
        return
    block_n = max(16, triton.next_power_of_2(n))  # tl.dot needs tiles of at least 16
    _nearest_kept_kernel[(f,)](
        x,
        keep_i8,
        out,
        n,
        d,
        BLOCK_N=block_n,
        BLOCK_D=_NK_BLOCK_D,
        IEEE=x.dtype == torch.float32,
        num_warps=_NUM_WARPS,
    )


def segment_topk_triton(scores, cu_seqlens, k, keep_i8, max_seqlen: int) -> None:
    """scores float32 [T], cu_seqlens int32 [G+1], k int32 [G], keep_i8 int8 [T] (written).

    ``max_seqlen`` sizes the grid only: longer segments are still ranked in full."""
    g = k.shape[0]
    if g == 0 or scores.shape[0] == 0:
        return
    grid = (g, triton.cdiv(max(min(max_seqlen, scores.shape[0]), 1), _TOPK_BLOCK_I))
    _segment_topk_kernel[grid](
        scores,
        cu_seqlens,
        k,
        keep_i8,
        scores.shape[0],
        BLOCK_I=_TOPK_BLOCK_I,
        BLOCK_J=_TOPK_BLOCK_J,
        num_warps=_NUM_WARPS,
    )


def gather_rows_triton(x2d, index, out2d) -> None:
    """x2d [R, W] contiguous, index int64 [K] (in range), out2d [K, W]."""
    k, w = out2d.shape
    if k == 0 or w == 0:
        return
    grid = (k, triton.cdiv(w, _GATHER_BLOCK_W))
    _gather_rows_kernel[grid](
        x2d, index, out2d, w, x2d.shape[0], BLOCK_W=_GATHER_BLOCK_W, num_warps=_NUM_WARPS
    )


def merge_weighted_triton(x, target, sizes, out, new_sizes) -> None:
    """x [F, N, D], target int32 [F, N], sizes float32 [F, N] -> out [F, N, D], new_sizes."""
    f, n, d = x.shape
    if f == 0 or n == 0:
        return
    grid = (f, triton.cdiv(d, _MERGE_BLOCK_D))
    _merge_weighted_kernel[grid](
        x,
        target,
        sizes,
        out,
        new_sizes,
        n,
        d,
        BLOCK_N=triton.next_power_of_2(n),
        BLOCK_D=_MERGE_BLOCK_D,
        num_warps=_NUM_WARPS,
    )


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# Pruning (optional, off the default path: not hot). Adapter tokens [F, 64, 4096] before the LM
# (temporal scores, merging) and vision-tower patches [F, 256, 1792] (salient merging);
# 24 frames; gather_rows moves hidden rows of 4096 bf16 as 2048 int32 words or 8192 bytes.
# Quick: bf16 at N=64; --full: N=256 (ptxas 30-80 s each), fp16 and fp32 (a 256x256 fp32 Gram
# tile: ~130 s).
_PRUNE_DTYPES = (("bf16", "*bf16"), ("fp16", "*fp16"), ("fp32", "*fp32"))
AOT_CASES = [
    *(dict(kernel="_frame_cosine_kernel", variant=name,
           args=dict(x_ptr=dt, prev_ptr="*i32", out_ptr="*fp32", n_tok=64, d=4096,
                     stride_f=64 * 4096, stride_n=4096, first_score=2.0, BLOCK_N=_COS_BLOCK_N,
                     BLOCK_D=_COS_BLOCK_D), warps=_NUM_WARPS, hot=False, quick=name == "bf16")
      for name, dt in _PRUNE_DTYPES),
    *(dict(kernel="_nearest_kept_kernel", variant=f"{name},N={n}",
           args=dict(x_ptr=dt, keep_ptr="*i8", out_ptr="*i32", n_tok=n, d=d,
                     BLOCK_N=n, BLOCK_D=_NK_BLOCK_D, IEEE=name == "fp32"),
           warps=_NUM_WARPS, hot=False, quick=name == "bf16" and n == 64)
      for name, dt in _PRUNE_DTYPES for n, d in ((64, 4096), (256, 1792))),
    *(dict(kernel="_merge_weighted_kernel", variant=f"{name},N={n}",
           args=dict(x_ptr=dt, target_ptr="*i32", sizes_ptr="*fp32", out_ptr=dt,
                     new_sizes_ptr="*fp32", n_tok=n, d=d, BLOCK_N=n,
                     BLOCK_D=_MERGE_BLOCK_D), warps=_NUM_WARPS, hot=False,
           quick=name == "bf16" and n == 64)
      for name, dt in _PRUNE_DTYPES for n, d in ((64, 4096), (256, 1792))),
    dict(kernel="_segment_topk_kernel", variant="fp32",
         args=dict(scores_ptr="*fp32", cu_ptr="*i32", k_ptr="*i32",
                   keep_ptr="*i8", n_tokens=8 * 24 * 144, BLOCK_I=_TOPK_BLOCK_I,
                   BLOCK_J=_TOPK_BLOCK_J),
         warps=_NUM_WARPS, hot=False),
    *(dict(kernel="_gather_rows_kernel", variant=name,
           args=dict(x_ptr=dt, idx_ptr="*i64", out_ptr=dt, width=w, n_src=8 * 24 * 144,
                     BLOCK_W=_GATHER_BLOCK_W), warps=_NUM_WARPS, hot=False)
      for name, dt, w in (("i32", "*i32", 2048), ("u8", "*u8", 8192))),
]  # fmt: skip
