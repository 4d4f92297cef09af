"""conv_compress in Triton: the 2x2 stride-2 conv over a token grid as one implicit GEMM.

Output row m = (f, i, j) of [F*(g/2)^2, C_out] is the dot of the four C-wide input token rows
(2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1) of frame f, concatenated in (kh, kw, c) order,
with the weight re-laid-out once as [4C, C_out] (cached, see `prepare_weight`). The K loop walks
the four taps, then C in BLOCK_K chunks: each A tile is BLOCK_M rows of one tap, read in place
from x (no gathered copy); the epilogue adds the bias and rounds once.

Runs on CUDA tensors, or on CPU tensors under the interpreter. Imported lazily by api.py; never
imports the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from haic_kernels.ops._common import interpreting

# Full size: M = F*64 (1536 per 24-frame video), N = 1792 = 14*128 = 7*256, K = 4*1792 = 7168.
# Long K: deeper pipelines (4-5 stages) with BLOCK_K 64 hide the load latency; 128x128 gives
# 12*14 = 168 programs per video (above the 132 SMs of an H100), 128x256 fewer, larger tiles for
# the 8- and 32-video batches. Not yet swept on a GPU: the tuner picks per (M, N, K).
_GPU_CONFIGS = [
    triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s
    )
    for bm, bn, bk, w, s in [
        (128, 128, 64, 4, 4),
        (128, 128, 64, 8, 4),
        (128, 256, 64, 8, 3),
        (64, 128, 64, 4, 5),
        (128, 128, 32, 4, 5),
        (64, 64, 64, 4, 4),
    ]
]
# The interpreter: one small tile, no tuning (each config would be run on every new shape).
_INTERPRET_CONFIGS = [
    triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4)
]


def _configs() -> list[triton.Config]:
    return _INTERPRET_CONFIGS if interpreting() else _GPU_CONFIGS


@triton.autotune(configs=_configs(), key=["n_rows", "n_cols", "C"])
@triton.jit
def _conv_compress_fwd_kernel(
    x_ptr,  # [F, T, C], any strides; the grid starts at token tok0 (1 with CLS, else 0)
    w_ptr,  # [4C, C_out] contiguous, rows in (kh, kw, c) order
    bias_ptr,  # [C_out] (ignored when HAS_BIAS is false)
    out_ptr,  # [F*(g/2)^2, C_out] contiguous
    n_rows,  # F * (g/2)^2
    n_cols,  # C_out
    C,
    g,
    tok0,
    stride_f,
    stride_t,
    stride_c,
    HAS_BIAS: tl.constexpr,
    IEEE_FP32: tl.constexpr,  # fp32: full-precision dot, not TF32
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # Grouped program order: GROUP_M row tiles share each weight column tile while it is in L2.
    pid = tl.program_id(0)
    num_m = tl.cdiv(n_rows, BLOCK_M)
    num_n = tl.cdiv(n_cols, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % group_size
    pid_n = (pid % group) // group_size

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < n_cols
    half = g // 2
    rows64 = rows.to(tl.int64)  # x offsets pass 2^31 elements at 32+ videos
    f = rows64 // (half * half)
    ij = rows64 % (half * half)
    i = ij // half
    j = ij % half
    # Token of tap (0, 0); tap (kh, kw) adds kh*g + kw.
    base = f * stride_f + (tok0 + (2 * i) * g + 2 * j) * stride_t
    ks0 = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in tl.static_range(4):
        a_rows = base + ((tap // 2) * g + (tap % 2)) * stride_t
        for c0 in range(0, C, BLOCK_K):
            cs = c0 + ks0
            c_ok = cs < C
            a = tl.load(
                x_ptr + a_rows[:, None] + cs[None, :] * stride_c,
                mask=row_ok[:, None] & c_ok[None, :],
                other=0.0,
            )
            b = tl.load(
                w_ptr + (tap * C + cs)[:, None] * n_cols + cols[None, :],
                mask=c_ok[:, None] & col_ok[None, :],
                other=0.0,
            )
            if IEEE_FP32:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)

    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(
        out_ptr + rows64[:, None] * n_cols + cols[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


def prepare_weight(weight: torch.Tensor) -> torch.Tensor:
    """[C_out, C, 2, 2] -> contiguous [4C, C_out], row (kh*2 + kw)*C + c."""
    c_out = weight.shape[0]
    return weight.permute(2, 3, 1, 0).reshape(4 * weight.shape[1], c_out).contiguous()


def conv_compress_triton(
    x: torch.Tensor,
    w_kn: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    grid: int,
) -> None:
    """Write conv_compress(x) into ``out`` ([F, (g/2)^2, C_out] contiguous, x's dtype).

    ``x`` [F, T, C] with T = g*g or 1 + g*g (CLS first, skipped), any strides; ``w_kn`` from
    `prepare_weight`; ``bias`` [C_out] or None. The caller validates everything.
    """
    n, tokens, c = x.shape
    g = grid
    n_rows = n * (g // 2) ** 2
    c_out = w_kn.shape[1]
    if n_rows == 0 or c_out == 0:
        return

    def launch_grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(n_rows, meta["BLOCK_M"]) * triton.cdiv(c_out, meta["BLOCK_N"]),)

    _conv_compress_fwd_kernel[launch_grid](
        x,
        w_kn,
        bias if bias is not None else w_kn,
        out,
        n_rows,
        c_out,
        c,
        g,
        tokens - g * g,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        HAS_BIAS=bias is not None,
        IEEE_FP32=x.dtype == torch.float32,
    )


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# The full-size call: 24 frames of 257 tokens (CLS first, tok0 = 1) of C = 1792 from the vision
# tower ([F, 257, C] contiguous: stride_c 1, the runtime's constant), grid 16 -> 1536 rows.
# Quick: the largest and the smallest tiles in bf16; --full: every config in every dtype.
AOT_CASES = [
    dict(
        kernel="_conv_compress_fwd_kernel", variant=str(dt).removeprefix("torch.").replace(
            "bfloat16", "bf16").replace("float16", "fp16").replace("float32", "fp32"),
        args=dict(x_ptr=dt, w_ptr=dt, bias_ptr=dt, out_ptr=dt, n_rows=24 * 64, n_cols=1792,
                  C=1792, g=16, tok0=1, stride_f=257 * 1792, stride_t=1792, stride_c=1,
                  HAS_BIAS=True, IEEE_FP32=dt == torch.float32),
        configs=_GPU_CONFIGS, quick=(0, 5) if dt == torch.bfloat16 else (),
        hot=dt == torch.bfloat16,
    )
    for dt in (torch.bfloat16, torch.float16, torch.float32)
]  # fmt: skip
