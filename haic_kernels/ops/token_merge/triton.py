"""token_merge in Triton: ToMe's bipartite matching and the packed size-weighted merge.

Runs on CUDA tensors, or on CPU tensors under the interpreter. Imported lazily by ops.py.

Matching, two launches per ToMe step (no host read): `_match_kernel` (one program per frame and
block of A rows: the cosine against every B row of the frame, tiled, a running max with the
lower row winning ties) and `_rank_kernel` (one program per frame and block of A rows: an A row
merges when fewer than ``r`` A rows of its frame beat it, a tie going to the lower row). The
cosine is ``dot / sqrt_rn(max(|a|^2 |b|^2, eps^2))`` with ``div_rn``, fp32 IEEE dot products:
the reference's formula, only the dot's summation order differs.

Merge: the sources of each kept row grouped by a stable sort (torch), then `_merge_kernel`, one
program per (kept row, column block), sums them in row order, no atomics: deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_NUM_WARPS = 4
_MATCH_BLOCK_A = 32
_MATCH_BLOCK_B = 32
_RANK_BLOCK = 64
_MERGE_BLOCK_D = 128
_MAX_D = 256  # the metric's features in one tile (the vision tower's head dim is 112)


@triton.jit
def _match_kernel(
    m_ptr, cu_ptr, best_ptr, match_ptr, total, d,
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    f = tl.program_id(0)
    start = tl.minimum(tl.maximum(tl.load(cu_ptr + f), 0), total)
    n = tl.minimum(tl.maximum(tl.load(cu_ptr + f + 1), start), total) - start
    cols = tl.arange(0, BLOCK_D)
    c_ok = cols < d
    n_a = (n + 1) // 2  # even local rows, CLS included
    n_b = n // 2
    for a0 in range(tl.program_id(1) * BLOCK_A, n_a, tl.num_programs(1) * BLOCK_A):
        ia = a0 + tl.arange(0, BLOCK_A)
        ra = 2 * ia  # local row
        a_ok = ia < n_a
        pa = (start + ra).to(tl.int64)
        a = tl.load(m_ptr + pa[:, None] * d + cols[None, :], mask=a_ok[:, None] & c_ok[None, :],
                    other=0.0).to(tl.float32)  # fmt: skip
        na = tl.sum(a * a, axis=1)
        best = tl.full([BLOCK_A], float("-inf"), tl.float32)
        arg = tl.zeros([BLOCK_A], dtype=tl.int32)
        for b0 in range(0, n_b, BLOCK_B):
            ib = b0 + tl.arange(0, BLOCK_B)
            b_ok = ib < n_b
            pb = (start + 2 * ib + 1).to(tl.int64)
            b = tl.load(m_ptr + pb[:, None] * d + cols[None, :],
                        mask=b_ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)  # fmt: skip
            nb = tl.sum(b * b, axis=1)
            dot = tl.dot(a, tl.trans(b), input_precision="ieee")
            den = tl.sqrt_rn(tl.maximum(na[:, None] * nb[None, :], 1e-16))
            cos = tl.where(b_ok[None, :], tl.div_rn(dot, den), float("-inf"))
            t_best = tl.max(cos, axis=1)
            t_arg = tl.argmax(cos, axis=1, tie_break_left=True).to(tl.int32) + b0
            better = t_best > best  # strictly: an earlier tile keeps a tie
            arg = tl.where(better, t_arg, arg)
            best = tl.maximum(best, t_best)
        best = tl.where(ra == 0, float("-inf"), best)  # CLS never merges
        tl.store(best_ptr + pa, best, mask=a_ok)
        tl.store(match_ptr + pa, start + 2 * arg.to(tl.int64) + 1, mask=a_ok)


@triton.jit
def _rank_kernel(
    best_ptr, match_ptr, cu_ptr, r_ptr, target_ptr, total, BLOCK: tl.constexpr
):  # fmt: skip
    f = tl.program_id(0)
    start = tl.minimum(tl.maximum(tl.load(cu_ptr + f), 0), total)
    n = tl.minimum(tl.maximum(tl.load(cu_ptr + f + 1), start), total) - start
    r = tl.load(r_ptr + f)
    n_a = (n + 1) // 2
    for a0 in range(tl.program_id(1) * BLOCK, n_a, tl.num_programs(1) * BLOCK):
        ia = a0 + tl.arange(0, BLOCK)
        a_ok = ia < n_a
        pa = (start + 2 * ia).to(tl.int64)
        s = tl.load(best_ptr + pa, mask=a_ok, other=float("-inf"))
        beaten = tl.zeros([BLOCK], dtype=tl.int32)
        for j0 in range(0, n_a, BLOCK):
            ij = j0 + tl.arange(0, BLOCK)
            sj = tl.load(best_ptr + (start + 2 * ij).to(tl.int64), mask=ij < n_a,
                         other=float("-inf"))  # fmt: skip
            wins = (sj[None, :] > s[:, None]) | (
                (sj[None, :] == s[:, None]) & (ij[None, :] < ia[:, None])
            )
            beaten += tl.sum((wins & (ij < n_a)[None, :]).to(tl.int32), axis=1)
        merge = a_ok & (beaten < r) & (ia > 0)
        m = tl.load(match_ptr + pa, mask=merge, other=0)
        tl.store(target_ptr + pa, m, mask=merge)


@triton.jit
def _merge_kernel(
    x_ptr, sizes_ptr, stay_ptr, start_ptr, count_ptr, order_ptr, out_ptr, new_sizes_ptr, d,
    BLOCK_D: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    c_ok = cols < d
    s = tl.load(stay_ptr + i)
    lo = tl.load(start_ptr + s)
    cnt = tl.load(count_ptr + s)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    den = tl.zeros([1], dtype=tl.float32)
    for m in range(0, cnt):
        j = tl.load(order_ptr + lo + m)
        w = tl.load(sizes_ptr + j)
        xj = tl.load(x_ptr + j * d + cols, mask=c_ok, other=0.0).to(tl.float32)
        acc += xj * w
        den += w
    xs = tl.load(x_ptr + s * d + cols, mask=c_ok, other=0.0)
    y = tl.div_rn(acc, tl.broadcast_to(den, [BLOCK_D])).to(out_ptr.dtype.element_ty)
    y = tl.where(cnt == 1, xs, y)  # nothing merged in: the row is copied
    tl.store(out_ptr + i.to(tl.int64) * d + cols, y, mask=c_ok)
    if tl.program_id(1) == 0:
        tl.store(new_sizes_ptr + i + tl.arange(0, 1), den)


# ---- launchers --------------------------------------------------------------------------------


def bipartite_match_triton(metric, cu, r, max_seqlen: int, best, match, target) -> None:
    """metric fp32/fp16/bf16 [T, D] contiguous (D <= 256), cu int32 [N+1], r int32 [N]; best,
    match, target [T] written (target: every row's)."""
    t, d = metric.shape
    target.copy_(torch.arange(t, device=metric.device))
    n = r.shape[0]
    if t == 0 or n == 0:
        return
    if d > _MAX_D:
        raise ValueError(f"metric: at most {_MAX_D} features for the Triton matcher, got {d}")
    n_a = max((max(max_seqlen, 1) + 1) // 2, 1)
    block_d = max(16, triton.next_power_of_2(d))
    grid = (n, triton.cdiv(n_a, _MATCH_BLOCK_A))
    _match_kernel[grid](metric, cu, best, match, t, d, BLOCK_A=_MATCH_BLOCK_A,
                        BLOCK_B=_MATCH_BLOCK_B, BLOCK_D=block_d, num_warps=_NUM_WARPS)  # fmt: skip
    grid = (n, triton.cdiv(n_a, _RANK_BLOCK))
    _rank_kernel[grid](best, match, cu, r, target, t, BLOCK=_RANK_BLOCK, num_warps=_NUM_WARPS)


def merge_packed_triton(x, sizes, target, kept: int, alloc):
    """x [T, D] contiguous, sizes fp32 [T], target int64 [T] (checked), ``kept`` rows stay ->
    (merged [kept, D], sizes fp32 [kept], row int64 [T])."""
    t, d = x.shape
    dev = x.device
    stay = target == torch.arange(t, device=dev)
    out_row = torch.cumsum(stay.to(torch.int64), 0) - 1
    # The kept rows in order, and each row's sources grouped by target in row order (stable
    # sorts: no host read of how many there are).
    stay_rows = torch.argsort((~stay).to(torch.int8), stable=True)[:kept].contiguous()
    order = torch.argsort(target, stable=True).contiguous()
    count = torch.zeros(t, dtype=torch.int64, device=dev).index_add_(0, target,
                                                                     torch.ones_like(target))  # fmt: skip
    start = (torch.cumsum(count, 0) - count).contiguous()
    out = alloc((kept, d), x.dtype, dev)
    new_sizes = alloc((kept,), torch.float32, dev)
    if kept and d:
        grid = (kept, triton.cdiv(d, _MERGE_BLOCK_D))
        _merge_kernel[grid](x, sizes, stay_rows, start, count, order, out, new_sizes, d,
                            BLOCK_D=_MERGE_BLOCK_D, num_warps=_NUM_WARPS)  # fmt: skip
    elif kept:
        new_sizes.copy_(torch.zeros(t, device=dev).index_add_(0, target, sizes)[stay_rows])
    return out, new_sizes, out_row[target]


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# The vision tower's calls, 24 packed frames of 257 rows: the metric is the keys' head mean in
# fp32 [T, 112] (BLOCK_D 128); the merge moves the hidden rows [T, 1792] in the model's dtype.
# Not hot: a merging block launches them once, next to a 2.2 TFLOP-per-frame block.
_T = 24 * 257
AOT_CASES = [
    dict(kernel="_match_kernel", variant="fp32,D=112",
         args=dict(m_ptr=torch.float32, cu_ptr=torch.int32, best_ptr=torch.float32,
                   match_ptr=torch.int64, total=_T, d=112, BLOCK_A=_MATCH_BLOCK_A,
                   BLOCK_B=_MATCH_BLOCK_B, BLOCK_D=128),
         warps=_NUM_WARPS, hot=False),
    dict(kernel="_rank_kernel", variant="fp32",
         args=dict(best_ptr=torch.float32, match_ptr=torch.int64, cu_ptr=torch.int32,
                   r_ptr=torch.int32, target_ptr=torch.int64, total=_T, BLOCK=_RANK_BLOCK),
         warps=_NUM_WARPS, hot=False),
    *(dict(kernel="_merge_kernel", variant=name,
           args=dict(x_ptr=dt, sizes_ptr=torch.float32, stay_ptr=torch.int64,
                     start_ptr=torch.int64, count_ptr=torch.int64, order_ptr=torch.int64,
                     out_ptr=dt, new_sizes_ptr=torch.float32, d=1792, BLOCK_D=_MERGE_BLOCK_D),
           warps=_NUM_WARPS, hot=False, quick=name == "bf16")
      for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16),
                       ("fp32", torch.float32))),
]  # fmt: skip
