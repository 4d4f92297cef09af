"""expert_linear in Triton: one grouped GEMM over tiles that each belong to one expert.

Runs on CUDA tensors, or on CPU tensors under the interpreter (TRITON_INTERPRET=1 set before this
module is imported). Imported lazily by api.py; never imports the reference.

Layout: row tiles of BLOCK_M rows are laid out expert group after expert group over
``perm`` (the tokens sorted by expert, stable). A program finds its tile's expert from
``offsets`` (E <= 8 scalar loads), loads its rows of x through ``perm`` (the gather happens in
the load), multiplies by its expert's weight [N, K] and stores through ``perm`` (the scatter
happens in the store). The E weights are not stacked: the kernel gets the first weight's
pointer and, per other expert, the distance to its weight in elements, so no copy of the weights
exists and a CUDA graph bakes the addresses in like any other kernel argument.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from haic_kernels.ops._common import interpreting

# Configs for the CogVLM shapes (K=4096; N=6144 QKV, 4096 dense, 14336 gate/up; K=14336 down)
# on Hopper: 128x256x64 / 8 warps is the usual best bf16 tile for M >= 1k, 128x128 for narrower
# N; 64-row tiles cut the waste of the partial tile each expert group ends with (the language
# group is ~40-90 rows in a video prompt). Not yet swept on a GPU (none available to this
# project so far): the autotuner picks among them per (N, K, dtype, T bucket).
_GPU_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8,
                  num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8,
                  num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4,
                  num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4,
                  num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4,
                  num_stages=4),
    # decode (a handful of rows): weight-bandwidth bound, narrow row tiles, deep K pipeline
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 1}, num_warps=4,
                  num_stages=4),
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 256, "GROUP_M": 1}, num_warps=4,
                  num_stages=3),
]  # fmt: skip
# Under the interpreter: one small config (every config would run; tl.dot needs >= 16).
_INTERP_CONFIG = {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 2}


@triton.jit
def _expert_linear_kernel(
    x_ptr,
    w_ptr,  # weights[0]; expert e's weight starts at w_ptr + wd_e
    b_ptr,  # the first expert's bias that exists (any tensor if none); expert e's at b_ptr + bd_e
    out_ptr,
    perm_ptr,
    offsets_ptr,
    T,
    N,
    K,
    stride_xm,
    stride_om,
    m_bucket,  # autotune key only: decode-sized and prefill-sized calls tune separately
    wd1, wd2, wd3, wd4, wd5, wd6, wd7,
    bd1, bd2, bd3, bd4, bd5, bd6, bd7,
    E: tl.constexpr,
    BIAS_MASK: tl.constexpr,  # bit e set: expert e has a bias
    IEEE: tl.constexpr,  # fp32 inputs: full-precision dot (no TF32), as torch's default matmul
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,  # K % BLOCK_K == 0 (CogVLM's 4096 / 14336): no K mask in the loop
):  # fmt: skip
    pid = tl.program_id(0)
    n_tiles_n = tl.cdiv(N, BLOCK_N)
    n_tiles_m = tl.cdiv(T, BLOCK_M) + E - 1  # upper bound: each group adds <= 1 partial tile
    # Grouped ordering: GROUP_M row tiles sweep the N tiles together, so a weight tile is
    # reused from L2 by the row tiles of the group.
    per_group = GROUP_M * n_tiles_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(n_tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    # This tile's expert and its row range in perm, from the group offsets.
    expert = -1
    row_start = 0
    row_end = 0
    tile_base = 0
    for j in tl.static_range(E):
        # Clamped into [0, T]: offsets that lie (checked asynchronously on the GPU) must not
        # move a tile outside perm.
        lo = tl.minimum(tl.maximum(tl.load(offsets_ptr + j), 0), T)
        hi = tl.minimum(tl.maximum(tl.load(offsets_ptr + j + 1), lo), T)
        n_j = tl.cdiv(hi - lo, BLOCK_M)
        here = (pid_m >= tile_base) & (pid_m < tile_base + n_j)
        expert = tl.where(here, j, expert)
        row_start = tl.where(here, lo + (pid_m - tile_base) * BLOCK_M, row_start)
        row_end = tl.where(here, hi, row_end)
        tile_base += n_j
    if expert < 0:
        return  # past the last real tile (the grid is sized by the upper bound)

    wd = tl.where(expert == 1, wd1, 0)
    wd = tl.where(expert == 2, wd2, wd)
    wd = tl.where(expert == 3, wd3, wd)
    wd = tl.where(expert == 4, wd4, wd)
    wd = tl.where(expert == 5, wd5, wd)
    wd = tl.where(expert == 6, wd6, wd)
    wd = tl.where(expert == 7, wd7, wd)
    w_base = w_ptr + wd

    rows = row_start + tl.arange(0, BLOCK_M)
    row_ok = rows < row_end
    tok = tl.load(perm_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    tok = tl.minimum(tl.maximum(tok, 0), T - 1)  # a lying perm still stays inside x and out
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tok[:, None] * stride_xm + ks[None, :]
    b_ptrs = w_base + cols.to(tl.int64)[None, :] * K + ks[:, None]  # [BLOCK_K, BLOCK_N] of W^T

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            b = tl.load(b_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            k_ok = (k0 + ks) < K
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    if BIAS_MASK != 0:
        bd = tl.where(expert == 1, bd1, 0)
        bd = tl.where(expert == 2, bd2, bd)
        bd = tl.where(expert == 3, bd3, bd)
        bd = tl.where(expert == 4, bd4, bd)
        bd = tl.where(expert == 5, bd5, bd)
        bd = tl.where(expert == 6, bd6, bd)
        bd = tl.where(expert == 7, bd7, bd)
        has_bias = ((tl.full((), BIAS_MASK, tl.int32) >> expert) & 1) != 0
        n_bias = tl.where(has_bias, N, 0)  # no bias: load nothing, add 0
        bias = tl.load(b_ptr + bd + cols, mask=cols < n_bias, other=0.0)
        acc += bias.to(tl.float32)[None, :]

    o_ptrs = out_ptr + tok[:, None] * stride_om + cols[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


_even_k = triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})(
    _expert_linear_kernel
)
_autotuned = None


def _kernel():
    """The kernel as launched here: autotuned on a GPU, one fixed config under the interpreter."""
    global _autotuned
    if interpreting():
        return _even_k
    if _autotuned is None:
        _autotuned = triton.autotune(configs=_GPU_CONFIGS, key=["N", "K", "m_bucket", "E"])(_even_k)
    return _autotuned


def _distance(base: torch.Tensor, t: torch.Tensor) -> int:
    """Elements from ``base``'s first element to ``t``'s (both of one dtype, same device)."""
    diff = t.data_ptr() - base.data_ptr()
    size = t.element_size()
    if diff % size:
        raise ValueError("expert_linear: weights/biases must be aligned to their element size")
    return diff // size


def _m_bucket(t: int) -> int:
    # Powers of two up to 4096 rows: decode (1-16), small chunks, prefill; beyond, one bucket.
    return min(triton.next_power_of_2(max(t, 1)), 4096)


def expert_linear_triton(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    perm: torch.Tensor,
    offsets: torch.Tensor,
    out: torch.Tensor,
) -> None:
    """Write ``out[t] = x[t] @ W[e(t)].T + b[e(t)]`` (``out`` [T, N] contiguous).

    ``x`` [T, K] with unit last stride; ``weights`` E contiguous [N, K]; ``perm``/``offsets``
    int32 from a `Routing` (the caller validates shapes, dtypes and devices).
    """
    t, k = x.shape
    n = weights[0].shape[0]
    e = len(weights)
    if t == 0 or n == 0 or k == 0:  # k == 0 is refused by the api
        return
    ws = [w if w.is_contiguous() else w.contiguous() for w in weights]
    wd = [_distance(ws[0], w) for w in ws[1:]] + [0] * (8 - e)
    present = [b for b in biases if b is not None]
    b_base = present[0].contiguous() if present else ws[0]
    bs = [b.contiguous() if b is not None else None for b in biases]
    bias_mask = sum(1 << i for i, b in enumerate(bs) if b is not None)
    bd = [_distance(b_base, b) if b is not None else 0 for b in bs[1:]] + [0] * (8 - e)
    kernel = _kernel()
    args = (x, ws[0], b_base, out, perm, offsets, t, n, k, x.stride(0), out.stride(0), _m_bucket(t),
            *wd, *bd)  # fmt: skip
    consts = dict(E=e, BIAS_MASK=bias_mask, IEEE=x.dtype == torch.float32)

    def grid(meta):
        tiles_m = triton.cdiv(t, meta["BLOCK_M"]) + e - 1
        return (tiles_m * triton.cdiv(n, meta["BLOCK_N"]),)

    if interpreting():
        kernel[grid({**_INTERP_CONFIG})](*args, **consts, **_INTERP_CONFIG)
    else:
        kernel[grid](*args, **consts)


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# The image model's routed projections (2 experts, used only there), a 24-frame prompt of 1624
# tokens: QKV (K 4096 -> N 6144, the vision expert has a bias: BIAS_MASK 0b10) and the MLP's
# down projection (K 14336 -> N 4096). The two weights lie N*K elements apart; x and out are
# contiguous. Quick: QKV in bf16, the largest tiles and config 4 (fits sm_80); --full: all.
AOT_CASES = [
    dict(
        kernel="_expert_linear_kernel", variant=f"{name},{proj}",
        args=dict(x_ptr=dt, w_ptr=dt, b_ptr=dt, out_ptr=dt, perm_ptr=torch.int32,
                  offsets_ptr=torch.int32, T=1624, N=n, K=k, stride_xm=k, stride_om=n,
                  m_bucket=2048, wd1=n * k, **{f"wd{e}": 0 for e in range(2, 8)},
                  **{f"bd{e}": 0 for e in range(1, 8)}, E=2, BIAS_MASK=mask,
                  IEEE=dt == torch.float32, EVEN_K=True),
        configs=_GPU_CONFIGS, quick=(0, 4) if (proj == "qkv" and dt == torch.bfloat16) else (),
        hot=dt == torch.bfloat16,
    )
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32))
    for proj, k, n, mask in (("qkv", 4096, 6144, 2), ("down", 14336, 4096, 0))
    if proj == "qkv" or dt == torch.bfloat16
]  # fmt: skip
