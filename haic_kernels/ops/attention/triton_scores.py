"""attention's key-scores pass in Triton: the attention mass chosen query rows give each key
(what salient and text-guided pruning rank by), after the forward pass's LSE.

One program per (key block, batch, KV head) accumulates the probabilities of the group's chosen
rows into fp32 partial column sums; the partials are reduced in a fixed order (deterministic).
Imported by triton.py, whose `attention_triton` runs it when ``key_scores`` is asked for.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from haic_kernels.ops.attention.triton_masks import (
    _DECODE_BLOCK_M,
    _INTERP_BLOCK,
    _seq_bounds,
    _visible,
)

# Key-scores pass: one program per (key block, batch, KV head); 64 keys keeps the K tile and the
# running column sums in registers while the loop walks the chosen query rows of the group.
_SCORES_BLOCK_N = 64
_SCORES_BLOCK_M = 64


@triton.jit
def _key_scores_block(
    q_ptr, k_ptr, lse_ptr, sel_ptr, part_ptr, ids_ptr, bias_ptr, b64, hk, start_n, q_start,
    len_q, k_start, len_k, group, qk_scale, D,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
    stride_lb, stride_lh, stride_sb, stride_ib, stride_pb, stride_ph, stride_bb,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_IDS: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    # part[hk, b, j] = sum over the query heads of KV head hk and the chosen rows i of
    # exp(s_ij - lse_i): the probabilities of the forward pass, recomputed one key block at a time.
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    k_base = (
        k_ptr + b64 * stride_kb + hk.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kt
    )
    k_mask = (cols < len_k)[:, None] & (offs_d < D)[None, :]
    k = tl.load(k_base + cols[:, None] * stride_kt + offs_d[None, :], mask=k_mask, other=0.0)
    bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + b64 * stride_bb + k_start + cols, mask=cols < len_k, other=0.0)
    ids_base = ids_ptr + b64 * stride_ib + q_start
    off = len_k - len_q
    q_lo = 0
    if CAUSAL and not HAS_IDS:
        # Rows i < start_n - off see none of these keys.
        q_lo = (tl.maximum(start_n - off, 0) // BLOCK_M) * BLOCK_M
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for start_m in range(q_lo, len_q, BLOCK_M):
        rows = start_m + offs_m
        row_ok = rows < len_q
        sel = tl.load(sel_ptr + b64 * stride_sb + q_start + rows, mask=row_ok, other=0)
        if tl.max(sel.to(tl.int32)) > 0:
            ids_q = rows
            if HAS_IDS:
                ids_q = tl.load(ids_base + rows, mask=row_ok, other=-1)
            vis = _visible(rows, cols, len_k, off, ids_q, ids_base, CAUSAL, HAS_IDS)
            vis = vis & (sel != 0)[:, None]
            q_mask = row_ok[:, None] & (offs_d < D)[None, :]
            for g in range(0, group):
                h = (hk * group + g).to(tl.int64)
                q_base = q_ptr + b64 * stride_qb + h * stride_qh + q_start.to(tl.int64) * stride_qt
                q = tl.load(
                    q_base + rows[:, None] * stride_qt + offs_d[None, :], mask=q_mask, other=0.0
                )
                lse = tl.load(
                    lse_ptr + b64 * stride_lb + h * stride_lh + q_start + rows, mask=row_ok,
                    other=0.0,
                )  # fmt: skip
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
                s += (bias * 1.4426950408889634)[None, :]
                p = tl.math.exp2(s - (lse * 1.4426950408889634)[:, None])
                acc += tl.sum(tl.where(vis, p, 0.0), 0)
    p_base = part_ptr + hk.to(tl.int64) * stride_ph + b64 * stride_pb + k_start
    tl.store(p_base + cols, acc, mask=cols < len_k)


@triton.jit
def _key_scores_kernel(
    q_ptr, k_ptr, lse_ptr, sel_ptr, part_ptr, cu_q_ptr, cu_k_ptr, ids_ptr, bias_ptr,
    seqlen_q, seqlen_k, group, qk_scale, D,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
    stride_lb, stride_lh, stride_sb, stride_ib, stride_pb, stride_ph, stride_bb, total_q, total_k,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_IDS: tl.constexpr, VARLEN: tl.constexpr, PRECISION: tl.constexpr,
    HAS_BIAS: tl.constexpr = False,
):  # fmt: skip
    b = tl.program_id(1)
    hk = tl.program_id(2)
    q_start, len_q = _seq_bounds(cu_q_ptr, b, seqlen_q, total_q, VARLEN)
    k_start, len_k = _seq_bounds(cu_k_ptr, b, seqlen_k, total_k, VARLEN)
    n_prog = tl.num_programs(0)
    for blk in range(tl.program_id(0), tl.cdiv(len_k, BLOCK_N), n_prog):
        _key_scores_block(
            q_ptr, k_ptr, lse_ptr, sel_ptr, part_ptr, ids_ptr, bias_ptr, b.to(tl.int64), hk,
            blk * BLOCK_N, q_start, len_q, k_start, len_k, group, qk_scale, D,
            stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
            stride_lb, stride_lh, stride_sb, stride_ib, stride_pb, stride_ph, stride_bb,
            BLOCK_M, BLOCK_N, BLOCK_D, CAUSAL, HAS_IDS, HAS_BIAS, PRECISION,
        )  # fmt: skip


def _empty_scores(k, key_scores, packed):
    if key_scores is None:
        return None
    shape = (k.shape[0],) if packed else (k.shape[0], k.shape[1])
    return torch.zeros(shape, dtype=torch.float32, device=k.device)


def _key_scores(
    q, k, lse, key_scores, cu_q, cu_k, ids, bias, batch, seqlen_q, seqlen_k, max_k, group,
    qk_scale, d, qs, ks, ls, ids_sb, bias_sb, block_d, common, packed,
):  # fmt: skip
    """Second pass: per-KV-head partial column sums, reduced in a fixed order (deterministic)."""
    hkv = k.shape[-2]
    dev = q.device
    sel = key_scores.contiguous().view(torch.uint8)
    if packed:
        part = torch.zeros(hkv, k.shape[0], dtype=torch.float32, device=dev)
        ps = (0, part.stride(0))
        sel_sb = 0
    else:
        part = torch.zeros(hkv, batch, seqlen_k, dtype=torch.float32, device=dev)
        ps = (part.stride(1), part.stride(0))
        sel_sb = sel.stride(0)
    on_cpu = dev.type == "cpu"
    bn = _INTERP_BLOCK if on_cpu else _SCORES_BLOCK_N
    bm = _INTERP_BLOCK if on_cpu else _SCORES_BLOCK_M
    if 0 < seqlen_q <= _DECODE_BLOCK_M:  # padded decode-like calls: one small query tile
        bm = _DECODE_BLOCK_M
    grid = (triton.cdiv(max_k, bn), batch, hkv)
    _key_scores_kernel[grid](
        q, k, lse, sel, part, cu_q, cu_k, ids, bias, seqlen_q, seqlen_k, group, qk_scale, d,
        *qs, *ks, *ls, sel_sb, ids_sb, *ps, bias_sb, q.shape[0], k.shape[0], BLOCK_M=bm,
        BLOCK_N=bn, BLOCK_D=block_d, num_warps=4, **common,
    )  # fmt: skip
    total = part.sum(0)  # [B, Sk] or [Tk]
    hq = q.shape[-2]
    if packed:
        zero = torch.zeros(1, dtype=torch.int64, device=dev)
        csum = torch.cat([zero, key_scores.to(torch.int64).cumsum(0)])
        bq = cu_q.long().clamp(0, q.shape[0])  # as the kernels clamp a boundary that lies
        n_chosen = csum[bq[1:]] - csum[bq[:-1]]  # chosen rows per sequence
        rows_k = torch.arange(k.shape[0], device=dev, dtype=torch.int32)
        seq_of_key = torch.searchsorted(cu_k[1:].contiguous(), rows_k, right=True)
        n_key = n_chosen[seq_of_key.clamp(max=max(batch - 1, 0))]
    else:
        n_key = key_scores.sum(1, keepdim=True)  # [B, 1]
    denom = (n_key * hq).to(torch.float32)
    return torch.where(n_key > 0, total / denom.clamp_min(1.0), 0.0)
