"""Per-row E4M3 quantization in Triton: one program per row, amax, scale and cast in one pass.

PyTorch needs 6-7 launches for the same (abs, amax, clamp, divide, multiply, clamp, cast) and
reads the row 3 times; per linear layer of a decode step that is the difference between 1 and
~7 launches. Bytes per row of K elements: K*e read, K written, 4 (the scale) written.

The cast rounds in fp32 onto e4m3's grid first (`_round_to_e4m3`, round to nearest even) and
then converts an exactly representable value. On a GPU that equals ``cvt.rn.satfinite``; it also
makes the interpreter exact, whose fp32 -> e4m3 conversion rounds half up and drops the carry
into the exponent (31.3 -> 16, not 32), so the CPU tests check the GPU's arithmetic.

Runs on CUDA tensors, or on CPU tensors under the interpreter. Imported lazily by api.py; never
imports the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from haic_kernels.ops.fp8_linear.format import E4M3_MAX, MIN_AMAX

_E4M3_MAX = tl.constexpr(E4M3_MAX)
_MIN_AMAX = tl.constexpr(MIN_AMAX)

# Rows up to 16384 elements stay in registers (the model's K: 1792, 4096, 14336, 15360):
# 16 warps x 32 threads x 32 elements. Longer rows read twice (amax pass, then cast pass).
_MAX_BLOCK = 16384
_ELEMS_PER_THREAD = 32


@triton.jit
def _round_to_e4m3(v):
    """fp32 (|v| <= 448) -> the nearest e4m3fn value (ties to even), still fp32."""
    # Normals (|v| >= 2^-6): keep the top 3 of fp32's 23 mantissa bits, round half to even; a
    # carry out of the mantissa lands in the exponent, as it should.
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576  # mask 0xFFF00000
    normal = bits.to(tl.float32, bitcast=True)
    # Subnormals: multiples of 2^-9; adding 1.5 * 2^14 (ulp 2^-9) rounds to them, ties to even.
    # On |v|, then the sign back: a negative value that rounds to zero stays -0, as in torch.
    a = tl.abs(v)
    sub = (a + 24576.0) - 24576.0
    sub = tl.where(v < 0, -sub, sub)
    return tl.where(a < 0.015625, sub, normal)


@triton.jit
def _quantize_rows_kernel(
    x_ptr,
    q_ptr,  # [M, K] e4m3 contiguous
    scale_ptr,  # [M] fp32
    n_cols,
    stride_x,
    ONE_TILE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    q_row = q_ptr + row * n_cols
    cols = tl.arange(0, BLOCK)
    if ONE_TILE:
        m = cols < n_cols
        v = tl.load(x_row + cols, mask=m, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(v), axis=0)
    else:
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, n_cols, BLOCK):
            m = c0 + cols < n_cols
            acc = tl.maximum(acc, tl.abs(tl.load(x_row + c0 + cols, mask=m, other=0.0)))
        amax = tl.max(acc, axis=0)
    amax = tl.maximum(amax, _MIN_AMAX)
    inv = tl.math.div_rn(_E4M3_MAX, amax)  # IEEE division, as torch's
    tl.store(scale_ptr + row, tl.math.div_rn(amax, _E4M3_MAX))
    if ONE_TILE:
        y = _round_to_e4m3(tl.clamp(v * inv, -_E4M3_MAX, _E4M3_MAX))
        tl.store(q_row + cols, y.to(q_ptr.dtype.element_ty), mask=m)
    else:
        for c0 in range(0, n_cols, BLOCK):
            m = c0 + cols < n_cols
            v = tl.load(x_row + c0 + cols, mask=m, other=0.0).to(tl.float32)
            y = _round_to_e4m3(tl.clamp(v * inv, -_E4M3_MAX, _E4M3_MAX))
            tl.store(q_row + c0 + cols, y.to(q_ptr.dtype.element_ty), mask=m)


def _launch_shape(k: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for rows of ``k`` elements."""
    block = min(triton.next_power_of_2(k), _MAX_BLOCK)
    return block, max(1, min(16, block // (32 * _ELEMS_PER_THREAD)))


def quantize_rows_triton(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> None:
    """Quantize x [M, K] (unit column stride) into q [M, K] e4m3 and scale [M] fp32."""
    m, k = x.shape
    if m == 0 or k == 0:
        return
    block, warps = _launch_shape(k)
    _quantize_rows_kernel[(m,)](
        x, q, scale, k, x.stride(0), ONE_TILE=k <= block, BLOCK=block, num_warps=warps
    )


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# The activations of the large linears, one row per token: K 4096 (QKV, gate/up), 14336 (down),
# 1792 (vision fc1) and 15360 (vision fc2); bf16 in, e4m3 out.
def _quant_case(name, dt, k, quick=True):
    block, warps = _launch_shape(k)
    return dict(
        kernel="_quantize_rows_kernel", variant=f"{name},K={k}",
        args=dict(x_ptr=dt, q_ptr=torch.float8_e4m3fn, scale_ptr=torch.float32, n_cols=k,
                  stride_x=k, ONE_TILE=k <= block, BLOCK=block),
        warps=warps, hot=dt == torch.bfloat16, quick=quick, min_arch=89,  # e4m3: sm_89+
    )  # fmt: skip


AOT_CASES = [
    *(_quant_case("bf16", torch.bfloat16, k) for k in (4096, 14336, 1792, 15360)),
    _quant_case("fp16", torch.float16, 4096, quick=False),
    _quant_case("fp32", torch.float32, 4096, quick=False),
]
