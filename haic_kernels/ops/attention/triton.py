"""attention in Triton: a flash-attention-2 style forward pass (the key-scores pass that follows
it when asked: triton_scores.py; the masks both share: triton_masks.py).

Runs on CUDA tensors, or on CPU tensors under the interpreter (TRITON_INTERPRET=1 set before this
module is imported). Imported lazily by ops.py; never imports the reference.

One kernel serves every layout: a token row of sequence ``b`` lives at
``ptr + b*stride_b + (start + t)*stride_t + h*stride_h``, with ``stride_b = 0`` and ``start`` read
from ``cu_seqlens`` for the packed layout, ``start = 0`` for the padded one (whose key lengths
may come per sequence, ``seqused_k``, for a KV cache).

Metadata is never trusted to stay in bounds: sequence boundaries are clamped into the rows that
exist, and the grid's query blocks come from ``max_seqlen``: query rows past a too-small value
(which the API's device assert reports) are written NaN, never left holding what the buffer held.
One query block per program, so the main loop carries nothing but its tile (a grid-stride loop
around it cost ~200 B of register spills per thread on sm_90). Values: a key the mask hides never
contributes, even when it holds NaN or Inf (the masked tiles keep non-finite V entries out of the
P @ V product and mark the rows that do see them); visible non-finite values make the output
non-finite. Bad K rows and q rows are found from the logits they produce (a non-finite q or K row
gives a non-finite logit for every key it meets), so K never leaves shared memory for a check.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from haic_kernels.ops.attention.triton_masks import (
    _DECODE_BLOCK_M,
    _INTERP_BLOCK,
    _LOG2E,
    _seq_bounds,
    _visible,
)
from haic_kernels.ops.attention.triton_scores import (
    _SCORES_BLOCK_M,
    _SCORES_BLOCK_N,
    _empty_scores,
    _key_scores,
    _key_scores_kernel,  # noqa: F401 (AOT_CASES below name it as this module's)
)

# Tiles. GPU: BLOCK_M=128 query rows x BLOCK_N=64 keys with 8 warps and 3 stages for D=128 is
# the configuration of Triton's fused-attention tutorial for Ampere/Hopper (K and V tiles of
# 64 x 128 bf16 = 16 KiB each, double/triple-buffered within the 228 KiB of an H100 SM); a small
# autotune set around it is tried once per (D, mask kind, length bucket) on the GPU. Not yet
# swept here (no GPU was available when this was written). Decode-like calls (<= 16 query rows)
# use BLOCK_M=16, the smallest tile tl.dot takes. Interpreter: 32 x 32 tiles, because the
# interpreter's cost is per program and per loop step, and short test sequences (17, 97) would
# waste most of a 128-row tile.
_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=4),
]
_LN2 = 0.6931471805599453


@triton.jit
def _fwd_tile(
    acc, l_i, m_i, nf, q, k_base, v_base, ids_ptr, ids_q, bias_base, start_n, rows, len_k, off,
    stride_kt, stride_vt, qk_scale, D,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_IDS: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """One key block of the online softmax; logits in the log2 domain (scale * log2 e folded,
    key_bias times log2 e). ``nf`` [BLOCK_M] counts, per row, the visible keys whose logit is
    not finite (NaN/Inf in the q row or the K row)."""
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    kv_mask = (cols < len_k)[:, None] & (offs_d < D)[None, :]
    k = tl.load(k_base + cols[:, None] * stride_kt + offs_d[None, :], mask=kv_mask, other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    s_bad = ((s != s) | (tl.abs(s) == float("inf"))).to(tl.int32)  # a bad q or K row's logits
    if HAS_BIAS:
        s += tl.load(bias_base + cols, mask=cols < len_k, other=0.0)[None, :] * 1.4426950408889634
    if MASKED:
        vis = _visible(rows, cols, len_k, off, ids_q, ids_ptr, CAUSAL, HAS_IDS)
        s = tl.where(vis, s, float("-inf"))  # overwrites: a hidden key's NaN logit is gone
        nf += tl.sum(tl.where(vis, s_bad, 0), 1)
    else:
        nf += tl.sum(s_bad, 1)  # every key of the tile is visible to every row
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # Rows that have seen no key yet keep m = -inf; subtract 0 there so exp2 gives 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(v_base + cols[:, None] * stride_vt + offs_d[None, :], mask=kv_mask, other=0.0)
    acc = acc * alpha[:, None]
    if MASKED:
        # p = 0 for a hidden key, but 0 * NaN (or Inf) in P @ V is NaN: keep non-finite V out of
        # the product and mark, per (row, column), the rows that see one. Rare: only then the
        # second product runs.
        bad = (v != v) | (tl.abs(v) == float("inf"))
        if tl.max(bad.to(tl.int32)) > 0:
            acc = tl.dot(p.to(v.dtype), tl.where(bad, 0.0, v).to(v.dtype), acc,
                         input_precision=PRECISION)  # fmt: skip
            hits = tl.dot(vis.to(v.dtype), bad.to(v.dtype), input_precision=PRECISION)
            acc = tl.where(hits > 0, float("nan"), acc)
        else:
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
    return acc, l_i, m_new, nf


@triton.jit
def _fwd_block(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, ids_ptr, bias_ptr, b64, h, start_m, q_start, len_q,
    k_start, len_k, group, qk_scale, D,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh, stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lh, stride_ib, stride_bb,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_IDS: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_LSE: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Rows ``start_m .. start_m + BLOCK_M`` of query head ``h`` of sequence ``b64``."""
    hk = h // group
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_base = q_ptr + b64 * stride_qb + h.to(tl.int64) * stride_qh + q_start.to(tl.int64) * stride_qt
    k_base = (
        k_ptr + b64 * stride_kb + hk.to(tl.int64) * stride_kh + k_start.to(tl.int64) * stride_kt
    )
    v_base = (
        v_ptr + b64 * stride_vb + hk.to(tl.int64) * stride_vh + k_start.to(tl.int64) * stride_vt
    )
    row_ok = rows < len_q
    q_mask = row_ok[:, None] & (offs_d < D)[None, :]
    q = tl.load(q_base + rows[:, None] * stride_qt + offs_d[None, :], mask=q_mask, other=0.0)
    ids_base = ids_ptr + b64 * stride_ib + q_start
    ids_q = rows  # placeholder when there are no block ids
    if HAS_IDS:
        ids_q = tl.load(ids_base + rows, mask=row_ok, other=-1)
    bias_base = bias_ptr + b64 * stride_bb + k_start

    off = len_k - len_q
    if CAUSAL:
        # Keys below full_end are visible to every row of the tile and in range: no mask.
        full_end = tl.minimum(tl.maximum(start_m + off + 1, 0), len_k)
        full_end = (full_end // BLOCK_N) * BLOCK_N
        diag_end = tl.minimum(tl.maximum(start_m + BLOCK_M + off, 0), len_k)
    else:
        full_end = (len_k // BLOCK_N) * BLOCK_N
        diag_end = len_k

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    nf = tl.zeros([BLOCK_M], dtype=tl.int32)
    for start_n in range(0, full_end, BLOCK_N):
        acc, l_i, m_i, nf = _fwd_tile(
            acc, l_i, m_i, nf, q, k_base, v_base, ids_base, ids_q, bias_base, start_n, rows,
            len_k, off, stride_kt, stride_vt, qk_scale, D, BLOCK_N, BLOCK_D, False, CAUSAL,
            HAS_IDS, HAS_BIAS, PRECISION,
        )  # fmt: skip
    for start_n in range(full_end, diag_end, BLOCK_N):
        acc, l_i, m_i, nf = _fwd_tile(
            acc, l_i, m_i, nf, q, k_base, v_base, ids_base, ids_q, bias_base, start_n, rows,
            len_k, off, stride_kt, stride_vt, qk_scale, D, BLOCK_N, BLOCK_D, True, CAUSAL,
            HAS_IDS, HAS_BIAS, PRECISION,
        )  # fmt: skip
    if HAS_IDS:
        # Past the causal frontier only same-frame keys are visible: visit blocks holding one.
        tail = full_end + tl.cdiv(diag_end - full_end, BLOCK_N) * BLOCK_N
        for start_n in range(tail, len_k, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            ids_k = tl.load(ids_base + cols, mask=cols < len_k, other=-2)
            hit = (ids_q[:, None] == ids_k[None, :]) & (ids_q[:, None] >= 0)
            if tl.max(hit.to(tl.int32)) > 0:
                acc, l_i, m_i, nf = _fwd_tile(
                    acc, l_i, m_i, nf, q, k_base, v_base, ids_base, ids_q, bias_base, start_n,
                    rows, len_k, off, stride_kt, stride_vt, qk_scale, D, BLOCK_N, BLOCK_D, True,
                    CAUSAL, HAS_IDS, HAS_BIAS, PRECISION,
                )  # fmt: skip

    empty = l_i == 0.0  # a row that sees no key: out 0, lse -inf
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    # The non-finite rule: a row that sees a key is NaN when its q or a visible K row is bad.
    bad = nf > 0
    out = tl.where(bad[:, None], float("nan"), out)
    o_base = o_ptr + b64 * stride_ob + h.to(tl.int64) * stride_oh + q_start.to(tl.int64) * stride_ot
    tl.store(
        o_base + rows[:, None] * stride_ot + offs_d[None, :],
        out.to(o_ptr.dtype.element_ty),
        mask=q_mask,
    )
    if STORE_LSE:
        lse = (m_i + tl.math.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453  # ln 2
        lse = tl.where(empty, float("-inf"), lse)
        lse = tl.where(bad, float("nan"), lse)
        l_base = lse_ptr + b64 * stride_lb + h.to(tl.int64) * stride_lh + q_start
        tl.store(l_base + rows, lse, mask=row_ok)


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, cu_q_ptr, cu_k_ptr, ids_ptr, bias_ptr,
    seqlen_q, seqlen_k, group, qk_scale, D,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh, stride_ob, stride_ot, stride_oh,
    stride_lb, stride_lh, stride_ib, stride_bb, len_bucket, total_q, total_k, has_seqused_k,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
    HAS_IDS: tl.constexpr, VARLEN: tl.constexpr, STORE_LSE: tl.constexpr,
    PRECISION: tl.constexpr, HAS_BIAS: tl.constexpr = False,
):  # fmt: skip
    # total_q / total_k: rows of q and k (packed), the clamp of every boundary read from cu.
    # has_seqused_k != 0 (padded layout only): cu_k_ptr holds int32 [B] valid key lengths.
    h = tl.program_id(0)  # heads fastest: the query heads of one KV head share its K/V in L2
    b = tl.program_id(2)
    q_start, len_q = _seq_bounds(cu_q_ptr, b, seqlen_q, total_q, VARLEN)
    k_start, len_k = _seq_bounds(cu_k_ptr, b, seqlen_k, total_k, VARLEN)
    if has_seqused_k != 0:
        len_k = tl.minimum(tl.maximum(tl.load(cu_k_ptr + b), 0), seqlen_k)
    n_prog = tl.num_programs(1)
    # Causal blocks further down hold more work: launch them first so the tail is short.
    blk = n_prog - 1 - tl.program_id(1)
    if blk * BLOCK_M < len_q:
        _fwd_block(
            q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, ids_ptr, bias_ptr, b.to(tl.int64), h,
            blk * BLOCK_M, q_start, len_q, k_start, len_k, group, qk_scale, D,
            stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh,
            stride_vb, stride_vt, stride_vh, stride_ob, stride_ot, stride_oh,
            stride_lb, stride_lh, stride_ib, stride_bb,
            BLOCK_M, BLOCK_N, BLOCK_D, CAUSAL, HAS_IDS, HAS_BIAS, STORE_LSE, PRECISION,
        )  # fmt: skip
    # Rows past the grid (max_seqlen below the true length): NaN, so nothing stale comes back.
    for start in range((blk + n_prog) * BLOCK_M, len_q, n_prog * BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        ok = rows < len_q
        o_base = (o_ptr + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
                  + q_start.to(tl.int64) * stride_ot)  # fmt: skip
        nan = tl.full([BLOCK_M, BLOCK_D], float("nan"), tl.float32).to(o_ptr.dtype.element_ty)
        tl.store(o_base + rows[:, None] * stride_ot + offs_d[None, :], nan,
                 mask=ok[:, None] & (offs_d < D)[None, :])  # fmt: skip
        if STORE_LSE:
            l_base = lse_ptr + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + q_start
            tl.store(l_base + rows, tl.full([BLOCK_M], float("nan"), tl.float32), mask=ok)


_attn_fwd_tuned = triton.autotune(
    configs=_GPU_CONFIGS,
    key=["D", "group", "len_bucket", "CAUSAL", "HAS_IDS", "VARLEN", "HAS_BIAS"],
)(_attn_fwd_kernel)


# ---- launchers ----------------------------------------------------------------------------------


def _pow2_at_least(n: int, lo: int) -> int:
    return max(lo, triton.next_power_of_2(max(n, 1)))


def attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    cu_seqlens: torch.Tensor | None,
    cu_seqlens_k: torch.Tensor | None,
    block_ids: torch.Tensor | None,
    key_scores: torch.Tensor | None,
    causal: bool,
    scale: float,
    max_seqlen: int,
    max_seqlen_k: int,
    need_lse: bool,
    alloc,
    seqused_k: torch.Tensor | None = None,
    key_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(out, lse or None, scores or None)``; layouts as in `haic_kernels.attention`.

    ``max_seqlen`` / ``max_seqlen_k`` size the grid (query rows past ``max_seqlen`` come back
    NaN; the keys are covered whatever ``max_seqlen_k`` says); ``seqused_k`` (padded layout only, int32 [B], contiguous): the valid keys of each
    sequence, as in a KV cache; ``key_bias`` fp32 contiguous [B, Sk] / [Tk]: added to each key's
    logit. ``alloc(shape, dtype, device)`` allocates the outputs.
    """
    packed = cu_seqlens is not None
    # The kernels need unit stride along the head dim; other strides are passed through.
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    hq, d = q.shape[-2], q.shape[-1]
    hkv = k.shape[-2]
    dev = q.device
    if packed:
        cu_k = cu_seqlens if cu_seqlens_k is None else cu_seqlens_k
        batch = cu_seqlens.numel() - 1
        seqlen_q = seqlen_k = 0
        qs = (0, q.stride(0), q.stride(1))
        ks = (0, k.stride(0), k.stride(1))
        vs = (0, v.stride(0), v.stride(1))
    else:
        # An int32 pointer the kernel never reads (VARLEN off): no allocation on a decode step.
        cu_seqlens = seqused_k if seqused_k is not None else torch.zeros(1, dtype=torch.int32,
                                                                          device=dev)  # fmt: skip
        cu_k = cu_seqlens
        batch, seqlen_q, seqlen_k = q.shape[0], q.shape[1], k.shape[1]
        max_seqlen, max_seqlen_k = seqlen_q, seqlen_k
        qs = (q.stride(0), q.stride(1), q.stride(2))
        ks = (k.stride(0), k.stride(1), k.stride(2))
        vs = (v.stride(0), v.stride(1), v.stride(2))
    out = alloc(q.shape, q.dtype, dev)
    os_ = (0, out.stride(0), out.stride(1)) if packed else out.stride()[:3]
    need_lse_buf = need_lse or key_scores is not None
    lse_shape = (hq, q.shape[0]) if packed else (batch, hq, seqlen_q)
    lse = alloc(lse_shape, torch.float32, dev) if need_lse_buf else out.new_empty(1).float()
    ls = (0, 0)  # not written (STORE_LSE=False)
    if need_lse_buf:
        ls = (0, lse.stride(0)) if packed else (lse.stride(0), lse.stride(1))
    ids = block_ids if block_ids is not None else cu_seqlens
    ids_sb = 0 if packed or block_ids is None else block_ids.stride(0)
    bias = key_bias if key_bias is not None else lse  # a placeholder when HAS_BIAS is False
    bias_sb = 0 if packed or key_bias is None else key_bias.stride(0)
    if out.numel() == 0 or batch == 0:
        return out, (lse if need_lse else None), _empty_scores(k, key_scores, packed)
    block_d = _pow2_at_least(d, 16)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    qk_scale = scale * _LOG2E
    group = hq // hkv
    common = dict(CAUSAL=causal, HAS_IDS=block_ids is not None, VARLEN=packed, PRECISION=precision,
                  HAS_BIAS=key_bias is not None)  # fmt: skip
    args = (
        q, k, v, out, lse, cu_seqlens, cu_k, ids, bias, seqlen_q, seqlen_k, group, qk_scale, d,
        *qs, *ks, *vs, *os_, *ls, ids_sb, bias_sb,
    )  # fmt: skip
    bounds = (q.shape[0], k.shape[0], int(seqused_k is not None))
    m_blocks = max(max_seqlen, 1)
    from haic_kernels.ops._common import interpreting

    small = max_seqlen <= _DECODE_BLOCK_M
    if dev.type == "cpu" or interpreting() or small:
        bm = _DECODE_BLOCK_M if small else _INTERP_BLOCK
        bn = _INTERP_BLOCK if dev.type == "cpu" else 64
        grid = (hq, triton.cdiv(m_blocks, bm), batch)
        _attn_fwd_kernel[grid](
            *args, 0, *bounds, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d,
            STORE_LSE=need_lse_buf, num_warps=4, **common,
        )  # fmt: skip
    else:
        bucket = min(triton.next_power_of_2(m_blocks), 1 << 14)

        def grid(meta):
            return (hq, triton.cdiv(m_blocks, meta["BLOCK_M"]), batch)

        _attn_fwd_tuned[grid](
            *args, bucket, *bounds, BLOCK_D=block_d, STORE_LSE=need_lse_buf, **common
        )

    scores = None
    if key_scores is not None:
        scores = _key_scores(
            q, k, lse, key_scores, cu_seqlens, cu_k, ids, bias, batch, seqlen_q, seqlen_k,
            max(max_seqlen_k, 1), group, qk_scale, d, qs, ks, ls, ids_sb, bias_sb, block_d, common,
            packed,
        )  # fmt: skip
    return out, (lse if need_lse else None), scores


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# The model's calls, with the strides the launcher passes:
# - vision: dense [24, 257, 16, 112] q/k/v, strided views of the QKV output [24, 257, 3, 16, 112]
#   (row stride 5376), full attention, one query head per KV head (group 1: a constant);
# - LM prefill: dense [1, 1624, 32|8, 128] from rope_qkv, causal, GQA 4; and packed (varlen:
#   batch strides 0, cu_seqlens) for ragged batches;
# - the small-tile path (<= 16 query rows: decode without the CUDA kernel) against a cache of
#   1688 rows [1, 1688, 8, 128];
# - the tower under ToMe: packed frames (varlen) with the log-size key bias;
# - key scores (pruning: not hot): the vision CLS row and the LM's last row.
# Quick: bf16, tiles 128x64 (8 warps) and 64x64 (128x64 alone for the packed calls), and the
# small-tile path in bf16 / fp16;
# --full: every config and dtype (fp32 tiles take ptxas 12-40 s each).
def _attn_args(dt, d, sq, sk, qs, ks, os_, group, varlen, causal, bucket, rows=(1, 1), bias=False):
    # rows: (q rows, k rows) of the call (total_q / total_k: B * S dense, T packed).
    return dict(total_q=rows[0], total_k=rows[1], has_seqused_k=0,
        q_ptr=dt, k_ptr=dt, v_ptr=dt, o_ptr=dt, lse_ptr=torch.float32, cu_q_ptr=torch.int32,
        cu_k_ptr=torch.int32, ids_ptr=torch.int32, bias_ptr=torch.float32, seqlen_q=sq,
        seqlen_k=sk, group=group,
        qk_scale=d**-0.5 * _LOG2E, D=d, stride_qb=qs[0], stride_qt=qs[1], stride_qh=qs[2],
        stride_kb=ks[0], stride_kt=ks[1], stride_kh=ks[2], stride_vb=ks[0], stride_vt=ks[1],
        stride_vh=ks[2], stride_ob=os_[0], stride_ot=os_[1], stride_oh=os_[2], stride_lb=0,
        stride_lh=0, stride_ib=0, stride_bb=0, len_bucket=bucket,
        BLOCK_D=max(16, 1 << (d - 1).bit_length()),
        CAUSAL=causal, HAS_IDS=False, VARLEN=varlen, STORE_LSE=False, HAS_BIAS=bias,
        PRECISION="ieee" if dt == torch.float32 else "tf32",
    )  # fmt: skip


# (D, seqlen_q, seqlen_k, q strides, k/v strides, o strides, group, VARLEN, CAUSAL, len_bucket)
# (the vision tower: 24 frames; the LM: one 1624-token row, or 8 packed rows of 1624-1700)
_VISION = (112, 257, 257, (257 * 5376, 5376, 112), (257 * 5376, 5376, 112),
           (257 * 1792, 1792, 112), 1, False, False, 512, (24 * 257, 24 * 257))  # fmt: skip
# The tower under ToMe (VisionMerge): frames packed (varlen) with the log-size key bias.
_VISION_MERGED = (112, 0, 0, (0, 5376, 112), (0, 5376, 112), (0, 1792, 112), 1, True, False, 512,
                  (24 * 253, 24 * 253), True)  # fmt: skip
_LM = (128, 1624, 1624, (1624 * 4096, 4096, 128), (1624 * 1024, 1024, 128),
       (1624 * 4096, 4096, 128), 4, False, True, 2048, (1624, 1624))  # fmt: skip
_LM_PACKED = (128, 0, 0, (0, 4096, 128), (0, 1024, 128), (0, 4096, 128), 4, True, True, 2048,
              (13001, 13001))  # fmt: skip
_DECODE = (128, 1, 1688, (4096, 4096, 128), (1688 * 1024, 1024, 128), (4096, 4096, 128), 4,
           False, True, 0, (1, 1688))  # fmt: skip
_ATTN_DTYPES = (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32))
AOT_CASES = [
    *(dict(kernel="_attn_fwd_kernel", variant=f"{name},{call}",
           args=_attn_args(dt, *shape), configs=_GPU_CONFIGS,
           quick=((0, 2) if call in ("vision", "lm") else (0,)) if dt == torch.bfloat16 else (),
           hot=dt == torch.bfloat16)
      for name, dt in _ATTN_DTYPES
      for call, shape in (("vision", _VISION), ("vision merged", _VISION_MERGED), ("lm", _LM),
                          ("lm packed", _LM_PACKED))
      if call in ("vision", "lm") or dt == torch.bfloat16),
    *(dict(kernel="_attn_fwd_kernel", variant=f"{name},decode 16x64",
           args={**_attn_args(dt, *_DECODE), "BLOCK_M": _DECODE_BLOCK_M, "BLOCK_N": 64},
           warps=4, quick=dt != torch.float32, hot=dt == torch.bfloat16)
      for name, dt in _ATTN_DTYPES),
    *(dict(kernel="_key_scores_kernel", variant=f"{name},{call}",
           args={**{k: v for k, v in _attn_args(dt, *shape).items()
                    if k not in ("v_ptr", "o_ptr", "STORE_LSE", "len_bucket", "has_seqused_k") and
                    not k.startswith(("stride_v", "stride_o", "stride_i"))},
                 "sel_ptr": torch.uint8, "part_ptr": torch.float32, "stride_lb": 16 * 257,
                 "stride_lh": 257, "stride_sb": 257, "stride_ib": 0, "stride_pb": 257,
                 "stride_ph": 24 * 257, "BLOCK_M": _SCORES_BLOCK_M, "BLOCK_N": _SCORES_BLOCK_N},
           warps=4, quick=dt == torch.bfloat16, hot=False)
      for name, dt in _ATTN_DTYPES for call, shape in (("vision", _VISION), ("lm", _LM))),
]  # fmt: skip
