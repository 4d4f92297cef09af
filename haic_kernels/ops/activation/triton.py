"""activation in Triton: one elementwise pass, ``gelu(a + bias)`` or ``silu(a) * b``.

Bytes per element (e = element size): bias_gelu reads e and writes e (the bias row stays in
L1/L2), as torch's ``F.gelu`` does, so after a GEMM with the bias already in its epilogue it is
a tie; it saves the separate bias pass when fc1 runs bias-free. silu_mul reads 2e and writes e,
where eager ``F.silu(g) * u`` reads 3e and writes 2e over two launches. Full size: the vision
MLP's [6168, 15360] bf16 GELU moves 379 MB per layer (~95 us at 4 TB/s); the LM's SwiGLU over
[T, 14336] moves 86 KB per token.

The variant is a constexpr flag of `_act_fwd_kernel` (GELU or SILU_MUL). 2D grid: one row per
program along axis 0, BLOCK columns along axis 1, so rows of any length keep every SM busy.

Runs on CUDA tensors, or on CPU tensors under the interpreter. Imported lazily by api.py; never
imports the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# 1024 columns x 4 warps: 8 elements per thread (one 16-byte vector of bf16 per operand);
# N = 15360 and 14336 split into 15 and 14 whole tiles. From that arithmetic; not yet swept.
_BLOCK = 1024
_NUM_WARPS = 4


@triton.jit
def _act_fwd_kernel(
    a_ptr,
    b_ptr,  # GELU: bias [N] (HAS_B); SILU_MUL: up [T, N]
    out_ptr,  # [T, N] contiguous
    n_cols,
    stride_a,
    stride_b,
    GELU: tl.constexpr,
    HAS_B: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = cols < n_cols
    a = tl.load(a_ptr + row * stride_a + cols, mask=m, other=0.0).to(tl.float32)
    if GELU:
        if HAS_B:
            a += tl.load(b_ptr + cols, mask=m, other=0.0).to(tl.float32)
        y = 0.5 * a * (1.0 + tl.math.erf(a * 0.7071067811865476))
    else:
        u = tl.load(b_ptr + row * stride_b + cols, mask=m, other=0.0).to(tl.float32)
        y = a * tl.sigmoid(a) * u
    tl.store(out_ptr + row * n_cols + cols, y.to(out_ptr.dtype.element_ty), mask=m)


def activation_triton(
    a: torch.Tensor, b: torch.Tensor | None, out: torch.Tensor, kind: str
) -> None:
    """Write ``gelu(a + b)`` or ``silu(a) * b`` of a [T, N] into out ([T, N] contiguous).
    Rows of a (and of b for silu_mul) may be strided; the caller validates the rest."""
    t, n = a.shape
    if t == 0 or n == 0:
        return
    if a.stride(1) != 1:
        a = a.contiguous()
    if b is not None and b.stride(-1) != 1:
        b = b.contiguous()
    gelu = kind == "gelu"
    _act_fwd_kernel[(t, triton.cdiv(n, _BLOCK))](
        a,
        b if b is not None else a,
        out,
        n,
        a.stride(0),
        b.stride(0) if (b is not None and not gelu) else 0,
        GELU=gelu,
        HAS_B=b is not None,
        BLOCK=_BLOCK,
        num_warps=_NUM_WARPS,
    )


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# silu_mul over the halves of one [T, 2 * 14336] gate/up output (row stride 28672) and
# bias_gelu over the vision fc1 output [T, 15360].
AOT_CASES = [
    *(dict(kernel="_act_fwd_kernel", variant=f"{name},silu_mul",
           args=dict(a_ptr=dt, b_ptr=dt, out_ptr=dt, n_cols=14336, stride_a=28672,
                     stride_b=28672, GELU=False, HAS_B=True, BLOCK=_BLOCK),
           warps=_NUM_WARPS, hot=dt == torch.bfloat16, quick=dt != torch.float32)
      for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32))),
    *(dict(kernel="_act_fwd_kernel", variant=f"{name},bias_gelu",
           args=dict(a_ptr=dt, b_ptr=dt, out_ptr=dt, n_cols=15360, stride_a=15360, stride_b=0,
                     GELU=True, HAS_B=True, BLOCK=_BLOCK),
           warps=_NUM_WARPS, hot=dt == torch.bfloat16, quick=dt != torch.float32)
      for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32))),
]  # fmt: skip
