"""token_merge in Triton: ToMe's bipartite matching and the packed size-weighted merge.

Runs on CUDA tensors, or on CPU tensors under the interpreter. Imported lazily by ops.py.

Matching, two launches per ToMe step (no host read): `_match_kernel` (one program per frame and
block of A rows: the cosine against every B row of the frame, tiled, a running max with the
lower row winning ties) and `_plan_kernel` (one program per frame, <= 257 rows: an A row merges
when fewer than ``r`` A rows of its frame beat it, a tie going to the lower row; every row's
target written). The cosine is ``dot / sqrt_rn(max(|a|^2 |b|^2, eps^2))`` with ``div_rn``, fp32
IEEE dot products: the reference's formula, only the dot's summation order differs.

The tower's step (`merge_step_triton`): the plan kernel also lays out the merge, frame by
frame with in-kernel prefix sums (the frame's new start comes from the host-known counts): the
merged rows in row order, each row's output row, each output row's staying row, and the unmerge
map moved one step. `_merge_kernel` (per frame, block of output rows, column block) then walks
its frame's r merged rows once and sums each output row's sources in row order, in fp32, no
atomics, no sort: deterministic, and the reference's sums bit for bit under the interpreter (a
GPU compile may contract a multiply-add into an FMA: the last bit may move). With the keys'
head mean (one torch reduction) four launches a step.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_NUM_WARPS = 4
_MATCH_BLOCK_A = 32
_MATCH_BLOCK_B = 32
_RANK_BLOCK = 64
_MERGE_BLOCK_I = 16
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
def _plan_kernel(
    best_ptr, match_ptr, cu_ptr, r_ptr, target_ptr, cu_new_ptr, dest_ptr, stay_of_ptr,
    merged_ptr, rows_ptr, rows_out_ptr, total, positions, BLOCK: tl.constexpr,
    PLAN: tl.constexpr,
):  # fmt: skip
    # One program per frame (<= 257 rows): the top-r rank writes every row's target; with PLAN
    # also the merge's plan, in phases that read what the previous one stored (a barrier
    # between them: one CTA, so its global stores are visible to its own threads after it).
    f = tl.program_id(0)
    start = tl.minimum(tl.maximum(tl.load(cu_ptr + f), 0), total)
    n = tl.minimum(tl.maximum(tl.load(cu_ptr + f + 1), start), total) - start
    r = tl.load(r_ptr + f)
    n_a = (n + 1) // 2
    done = tl.zeros([1], dtype=tl.int32)  # merged A rows so far: their slot in the list
    for a0 in range(0, n_a, BLOCK):
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
        tl.store(target_ptr + pa, tl.where(merge, m, pa), mask=a_ok)
        ib = a0 + tl.arange(0, BLOCK)  # B rows: always their own target
        pb = (start + 2 * ib + 1).to(tl.int64)
        tl.store(target_ptr + pb, pb, mask=ib < n // 2)
        if PLAN:  # the merged rows in row order, compacted
            mi = merge.to(tl.int32)
            slot = tl.cumsum(mi, axis=0) - mi + done
            tl.store(merged_ptr + start + slot, pa, mask=merge)
            done += tl.sum(mi, axis=0)
    if PLAN:
        tl.debug_barrier()
        # Output row of each staying row: its frame's new start + the rows staying before it.
        start_new = tl.load(cu_new_ptr + f).to(tl.int64)
        before = tl.zeros([1], dtype=tl.int64)
        for j0 in range(0, n, BLOCK):
            p = (start + j0 + tl.arange(0, BLOCK)).to(tl.int64)
            p_ok = p < start + n
            stay = p_ok & (tl.load(target_ptr + p, mask=p_ok, other=-1) == p)
            si = stay.to(tl.int64)
            d = start_new + before + tl.cumsum(si, axis=0) - si
            tl.store(dest_ptr + p, d, mask=stay)
            tl.store(stay_of_ptr + d, p, mask=stay)
            before += tl.sum(si, axis=0)
        tl.debug_barrier()
        for k0 in range(0, r, BLOCK):  # a merged row goes where its target went
            k = k0 + tl.arange(0, BLOCK)
            k_ok = k < r
            j = tl.load(merged_ptr + start + k, mask=k_ok, other=0)
            t = tl.load(target_ptr + j, mask=k_ok, other=0)
            tl.store(dest_ptr + j, tl.load(dest_ptr + t, mask=k_ok, other=0), mask=k_ok)
        tl.debug_barrier()
        # The unmerge map, one step on: each position's row moves where that row went. Rows
        # outside the frame (none by construction) become -1 instead of a stray read.
        for q0 in range(0, positions, BLOCK):
            q = q0 + tl.arange(0, BLOCK)
            q_ok = q < positions
            at = f.to(tl.int64) * positions + q
            old = tl.load(rows_ptr + at, mask=q_ok, other=-1)
            inside = q_ok & (old >= start) & (old < start + n)
            new = tl.load(dest_ptr + old, mask=inside, other=-1)
            tl.store(rows_out_ptr + at, new, mask=q_ok)


@triton.jit
def _merge_kernel(
    x_ptr, sizes_ptr, stay_of_ptr, merged_ptr, target_ptr, cu_ptr, cu_new_ptr, r_ptr, out_ptr,
    new_sizes_ptr, d, HAS_SIZES: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # Program (frame, block of its output rows, column block). The sources of output row i are
    # its staying row s and the merged rows whose target is s; the frame's merged rows (r of
    # them, listed in row order by the plan) are walked once, s joining the sum at its own
    # place: fp32, row order, no atomics (the reference's sums; see the module docstring).
    f = tl.program_id(0)
    start = tl.load(cu_ptr + f)
    start_new = tl.load(cu_new_ptr + f)
    n_new = tl.load(cu_new_ptr + f + 1) - start_new
    r = tl.load(r_ptr + f)
    i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    i_ok = i < n_new
    o = (start_new + i).to(tl.int64)
    s = tl.load(stay_of_ptr + o, mask=i_ok, other=0)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    c_ok = cols < d
    ok = i_ok[:, None] & c_ok[None, :]
    xs_in = tl.load(x_ptr + s[:, None] * d + cols[None, :], mask=ok, other=0.0)
    xs = xs_in.to(tl.float32)
    if HAS_SIZES:
        ws = tl.load(sizes_ptr + s, mask=i_ok, other=1.0)
    else:
        ws = tl.full([BLOCK_I], 1.0, tl.float32)
    acc = tl.zeros([BLOCK_I, BLOCK_D], dtype=tl.float32)
    den = tl.zeros([BLOCK_I], dtype=tl.float32)
    added = tl.zeros([BLOCK_I], dtype=tl.int1)
    hits = tl.zeros([BLOCK_I], dtype=tl.int32)
    for k in range(0, r):
        j = tl.load(merged_ptr + start + k)
        tj = tl.load(target_ptr + j)
        if HAS_SIZES:
            wj = tl.load(sizes_ptr + j)
        else:
            wj = 1.0
        xj = tl.load(x_ptr + j * d + cols, mask=c_ok, other=0.0).to(tl.float32)
        first = (s < j) & ~added  # the staying row comes before this source
        acc = tl.where(first[:, None], acc + xs * ws[:, None], acc)
        den = tl.where(first, den + ws, den)
        added = added | first
        hit = s == tj
        acc = tl.where(hit[:, None], acc + xj[None, :] * wj, acc)
        den = tl.where(hit, den + wj, den)
        hits += hit.to(tl.int32)
    acc = tl.where(added[:, None], acc, acc + xs * ws[:, None])
    den = tl.where(added, den, den + ws)
    y = tl.div_rn(acc, den[:, None]).to(out_ptr.dtype.element_ty)
    y = tl.where((hits == 0)[:, None], xs_in, y)  # nothing merged in: the row is copied
    tl.store(out_ptr + o[:, None] * d + cols[None, :], y, mask=ok)
    if tl.program_id(2) == 0:
        tl.store(new_sizes_ptr + o, den, mask=i_ok)


# ---- launchers --------------------------------------------------------------------------------


def _match(metric, cu, r, max_seqlen: int, best, match) -> None:
    t, d = metric.shape
    if d > _MAX_D:
        raise ValueError(f"metric: at most {_MAX_D} features for the Triton matcher, got {d}")
    n_a = max((max(max_seqlen, 1) + 1) // 2, 1)
    block_d = max(16, triton.next_power_of_2(d))
    grid = (r.shape[0], triton.cdiv(n_a, _MATCH_BLOCK_A))
    _match_kernel[grid](metric, cu, best, match, t, d, BLOCK_A=_MATCH_BLOCK_A,
                        BLOCK_B=_MATCH_BLOCK_B, BLOCK_D=block_d, num_warps=_NUM_WARPS)  # fmt: skip


def bipartite_match_triton(metric, cu, r, max_seqlen: int, best, match, target) -> None:
    """metric fp32/fp16/bf16 [T, D] contiguous (D <= 256), cu int32 [N+1] covering the T rows,
    r int32 [N]; best, match, target [T] written (target: every row's)."""
    if metric.shape[0] == 0 or r.shape[0] == 0:
        return
    _match(metric, cu, r, max_seqlen, best, match)
    _plan_kernel[(r.shape[0],)](best, match, cu, r, target, cu, target, target, target, target,
                                target, metric.shape[0], 0, BLOCK=_RANK_BLOCK, PLAN=False,
                                num_warps=_NUM_WARPS)  # fmt: skip


def _merge(x, sizes, plan, cu, cu_new, r, longest_new: int, out, new_sizes) -> None:
    """`_merge_kernel` over ``r.shape[0]`` frames; ``plan`` = (stay_of, merged, target)."""
    d = x.shape[1]
    grid = (r.shape[0], triton.cdiv(longest_new, _MERGE_BLOCK_I),
            max(1, triton.cdiv(d, _MERGE_BLOCK_D)))  # fmt: skip
    _merge_kernel[grid](x, x if sizes is None else sizes, *plan, cu, cu_new, r, out, new_sizes, d,
                        HAS_SIZES=sizes is not None, BLOCK_I=_MERGE_BLOCK_I,
                        BLOCK_D=_MERGE_BLOCK_D, num_warps=_NUM_WARPS)  # fmt: skip


def merge_packed_triton(x, sizes, target, kept: int, alloc):
    """x [T, D] contiguous, sizes fp32 [T], target int64 [T] (checked), ``kept`` rows stay ->
    (merged [kept, D], sizes fp32 [kept], row int64 [T]). Targets may cross frames here, so
    the batch is one frame to the merge kernel; its plan comes from one stable sort (the
    staying rows, then the merged ones, each in row order)."""
    t, d = x.shape
    dev = x.device
    stay = target == torch.arange(t, device=dev)
    out_row = torch.cumsum(stay.to(torch.int64), 0) - 1
    out = alloc((kept, d), x.dtype, dev)
    new_sizes = alloc((kept,), torch.float32, dev)
    if kept:
        order = torch.argsort((~stay).to(torch.int8), stable=True)
        cu = torch.tensor([0, t], dtype=torch.int32, device=dev)
        cu_new = torch.tensor([0, kept], dtype=torch.int32, device=dev)
        r = torch.tensor([t - kept], dtype=torch.int32, device=dev)
        plan = (order[:kept], order[kept:], target)
        _merge(x, sizes, plan, cu, cu_new, r, kept, out, new_sizes)
    return out, new_sizes, out_row[target]


def merge_step_triton(h, keys, sizes, cu, cu_new, r, rows, max_seqlen: int, kept: int,
                      longest_new: int, alloc):  # fmt: skip
    """One ToMe step of the vision tower in four launches (head mean, match, plan, merge), no
    host read: h [T, Dv] contiguous, keys [T, H, Dh] (the metric: their head mean, one fp32 reduction
    that reads them in place), sizes fp32 [T] or None (all 1), cu / cu_new int32
    [N+1] (frame f: n_f rows before, n_f - r_f after; ``kept`` rows in all, the longest frame
    ``longest_new``), r int32 [N] (valid), rows int64 [N, L] -> (merged h [kept, Dv], sizes
    fp32 [kept], rows int64 [N, L]: each position's row after the step)."""
    t, dv = h.shape
    dev = h.device
    n = r.shape[0]
    f32, i64 = torch.float32, torch.int64
    best, match, target = alloc((t,), f32, dev), alloc((t,), i64, dev), alloc((t,), i64, dev)
    dest, stay_of, merged = alloc((t,), i64, dev), alloc((kept,), i64, dev), alloc((t,), i64, dev)
    out, new_sizes = alloc((kept, dv), h.dtype, dev), alloc((kept,), f32, dev)
    rows_out = alloc(tuple(rows.shape), i64, dev)
    if t == 0 or n == 0:
        return out, new_sizes, rows_out
    # One pass over the keys where the torch backend's ``keys.to(float32).mean(1)`` makes two
    # and an fp32 copy; not folded into the match kernel: re-reading H heads per B tile there
    # spills ~3.7 KB (sm_90 AOT).
    metric = keys.mean(dim=1, dtype=torch.float32)
    _match(metric, cu, r, max_seqlen, best, match)
    _plan_kernel[(n,)](best, match, cu, r, target, cu_new, dest, stay_of, merged, rows, rows_out,
                       t, rows.shape[1], BLOCK=_RANK_BLOCK, PLAN=True,
                       num_warps=_NUM_WARPS)  # fmt: skip
    _merge(h, sizes, (stay_of, merged, target), cu, cu_new, r, longest_new, out, new_sizes)
    return out, new_sizes, rows_out


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# The vision tower's calls, 24 packed frames of 257 rows: the metric is the keys' head mean in
# fp32 [T, 112] (BLOCK_D 128); the plan runs per frame over its rows and the 257 positions; the
# merge moves the hidden rows [T, 1792] in the model's dtype (sizes all 1 in the first merging
# block: HAS_SIZES False). Not hot: a merging block launches each once, next to a 2.2
# TFLOP-per-frame block.
_T = 24 * 257
_I64 = torch.int64
AOT_CASES = [
    dict(kernel="_match_kernel", variant="fp32,D=112",
         args=dict(m_ptr=torch.float32, cu_ptr=torch.int32, best_ptr=torch.float32,
                   match_ptr=_I64, total=_T, d=112, BLOCK_A=_MATCH_BLOCK_A,
                   BLOCK_B=_MATCH_BLOCK_B, BLOCK_D=128),
         warps=_NUM_WARPS, hot=False),
    *(dict(kernel="_plan_kernel", variant=name,
           args=dict(best_ptr=torch.float32, match_ptr=_I64, cu_ptr=torch.int32,
                     r_ptr=torch.int32, target_ptr=_I64, cu_new_ptr=torch.int32, dest_ptr=_I64,
                     stay_of_ptr=_I64, merged_ptr=_I64, rows_ptr=_I64, rows_out_ptr=_I64,
                     total=_T, positions=257, BLOCK=_RANK_BLOCK, PLAN=plan),
           warps=_NUM_WARPS, hot=False, quick=plan)
      for name, plan in (("tower", True), ("match only", False))),
    *(dict(kernel="_merge_kernel", variant=f"{name},{'sizes' if sized else 'ones'}",
           args=dict(x_ptr=dt, sizes_ptr=torch.float32 if sized else dt, stay_of_ptr=_I64,
                     merged_ptr=_I64, target_ptr=_I64, cu_ptr=torch.int32,
                     cu_new_ptr=torch.int32, r_ptr=torch.int32, out_ptr=dt,
                     new_sizes_ptr=torch.float32, d=1792, HAS_SIZES=sized,
                     BLOCK_I=_MERGE_BLOCK_I, BLOCK_D=_MERGE_BLOCK_D),
           warps=_NUM_WARPS, hot=False, quick=name == "bf16" and sized)
      for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16),
                       ("fp32", torch.float32))
      for sized in (True, False)),
]  # fmt: skip
