"""norm in Triton: one program per row, RMSNorm or LayerNorm, residual add before or after.

Bytes per row of D elements (e = element size): RMSNorm / LayerNorm read D*e and write D*e;
add_rms_norm reads 2*D*e and writes 2*D*e (the normed row and the new residual); add_layer_norm
reads 2*D*e and writes D*e. The eager PyTorch forms move 3-5x that (the fp32 RMSNorm alone is
9 kernels: upcast, square, mean, add, rsqrt, two multiplies, downcast, plus the residual add).

Variants are constexpr flags of `_row_norm_fwd_kernel`: RMS (no mean, no bias) or LayerNorm,
RESIDUAL 0 none / 1 pre (add, round to the dtype, store, normalize that) / 2 post (normalize,
round, add). Rows up to `_MAX_BLOCK` stay in registers (ONE_TILE, one read); longer rows loop
over tiles and read again per pass.

Runs on CUDA tensors, or on CPU tensors under the interpreter (TRITON_INTERPRET=1 set before this
module is imported). Imported lazily by api.py; never imports the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Rows up to 8192 elements in one register tile: 16 warps x 32 threads x 16 elements; the model's
# rows are 1792 (vision) and 4096 (LM, adapter). Longer rows take the tiled loop.
_MAX_BLOCK = 8192
# 16 elements per thread (two 16-byte vector loads of bf16): BLOCK 2048 -> 4 warps, 4096 -> 8.
# From that arithmetic; not yet swept on a GPU.
_ELEMS_PER_THREAD = 16

_MODES = {"none": 0, "pre": 1, "post": 2}


@triton.jit
def _row_norm_fwd_kernel(
    x_ptr,
    r_ptr,  # residual [T, D] (RESIDUAL > 0)
    w_ptr,  # [D]
    b_ptr,  # [D] (HAS_BIAS)
    y_ptr,  # [T, D] contiguous
    h_ptr,  # [T, D] contiguous, x + residual (RESIDUAL == 1)
    n_cols,
    stride_x,
    stride_r,
    eps,
    RMS: tl.constexpr,
    RESIDUAL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ONE_TILE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    r_row = r_ptr + row * stride_r
    out_off = row * n_cols
    cols = tl.arange(0, BLOCK)
    if ONE_TILE:
        m = cols < n_cols
        v = _load_input(x_row, r_row, h_ptr + out_off, cols, m, RESIDUAL == 1, RESIDUAL == 1)
        if RMS:
            rstd = tl.math.rsqrt(tl.sum(v * v, axis=0) / n_cols + eps)
            n = v * rstd
        else:
            mean = tl.sum(v, axis=0) / n_cols
            c = tl.where(m, v - mean, 0.0)
            rstd = tl.math.rsqrt(tl.sum(c * c, axis=0) / n_cols + eps)
            n = c * rstd
        _store_output(n, w_ptr, b_ptr, r_row, y_ptr + out_off, cols, m, RESIDUAL, HAS_BIAS)
    else:
        # Pass 1: the sum (LayerNorm) or sum of squares (RMS); "pre" stores the rounded sum.
        # Later passes re-read x (+ residual) and round the sum again: the same value, with no
        # read-after-write dependence on h.
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for c0 in range(0, n_cols, BLOCK):
            m = c0 + cols < n_cols
            v = _load_input(x_row + c0, r_row + c0, h_ptr + out_off + c0, cols, m, RESIDUAL == 1,
                            RESIDUAL == 1)  # fmt: skip
            acc += v * v if RMS else v
        if RMS:
            mean = 0.0
            rstd = tl.math.rsqrt(tl.sum(acc, axis=0) / n_cols + eps)
        else:
            # Two-pass variance (centered), as torch computes it: no E[x^2] - mean^2 cancellation.
            mean = tl.sum(acc, axis=0) / n_cols
            acc = tl.zeros((BLOCK,), dtype=tl.float32)
            for c0 in range(0, n_cols, BLOCK):
                m = c0 + cols < n_cols
                v = _load_input(x_row + c0, r_row + c0, h_ptr, cols, m, RESIDUAL == 1, False)
                c = tl.where(m, v - mean, 0.0)
                acc += c * c
            rstd = tl.math.rsqrt(tl.sum(acc, axis=0) / n_cols + eps)
        for c0 in range(0, n_cols, BLOCK):
            m = c0 + cols < n_cols
            v = _load_input(x_row + c0, r_row + c0, h_ptr, cols, m, RESIDUAL == 1, False)
            _store_output((v - mean) * rstd, w_ptr + c0, b_ptr + c0, r_row + c0,
                          y_ptr + out_off + c0, cols, m, RESIDUAL, HAS_BIAS)  # fmt: skip


@triton.jit
def _load_input(x_row, r_row, h_row, cols, m, ADD: tl.constexpr, STORE: tl.constexpr):
    """fp32 row tile of the norm's input: x, or (ADD) x + residual rounded to the dtype as the
    model adds; STORE also writes that sum to h."""
    x = tl.load(x_row + cols, mask=m, other=0.0)
    if ADD:
        r = tl.load(r_row + cols, mask=m, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        if STORE:
            tl.store(h_row + cols, x, mask=m)
    return x.to(tl.float32)


@triton.jit
def _store_output(n, w_ptr, b_ptr, r_row, y_row, cols, m, RESIDUAL: tl.constexpr,
                  HAS_BIAS: tl.constexpr):  # fmt: skip
    """y = n * w (+ b), rounded; RESIDUAL 2 (post-norm) then adds the residual and rounds."""
    y = n * tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=m, other=0.0).to(tl.float32)
    y = y.to(y_row.dtype.element_ty)
    if RESIDUAL == 2:
        r = tl.load(r_row + cols, mask=m, other=0.0)
        y = (y.to(tl.float32) + r.to(tl.float32)).to(y_row.dtype.element_ty)
    tl.store(y_row + cols, y, mask=m)


def _launch_shape(d: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for rows of ``d`` elements."""
    block = min(triton.next_power_of_2(d), _MAX_BLOCK)
    return block, max(1, min(16, block // (32 * _ELEMS_PER_THREAD)))


def row_norm_triton(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    outs: list[torch.Tensor],
    eps: float,
    kind: str,
    mode: str,
) -> None:
    """Write the norm of x [T, D] into ``outs[0]`` (and x + residual into ``outs[1]`` for mode
    "pre"); outs contiguous [T, D] of x's dtype. The caller validates shapes and dtypes."""
    t, d = x.shape
    if t == 0:
        return
    if x.stride(1) != 1:
        x = x.contiguous()
    if residual is not None and residual.stride(1) != 1:
        residual = residual.contiguous()
    weight = weight.contiguous()
    bias = bias.contiguous() if bias is not None else None
    block, warps = _launch_shape(d)
    r = residual if residual is not None else x
    _row_norm_fwd_kernel[(t,)](
        x,
        r,
        weight,
        bias if bias is not None else weight,
        outs[0],
        outs[1] if len(outs) > 1 else outs[0],
        d,
        x.stride(0),
        r.stride(0),
        float(eps),
        RMS=kind == "rms",
        RESIDUAL=_MODES[mode],
        HAS_BIAS=bias is not None,
        ONE_TILE=d <= block,
        BLOCK=block,
        num_warps=warps,
    )


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# The model's rows, contiguous: the LM's add_rms_norm and final rms_norm (D 4096), EVA2's
# post-norm add_layer_norm (D 1792, bias), the adapter's layer_norm (D 4096); the tiled loop
# (rows past _MAX_BLOCK, not on the model's path) at D 16384.
def _norm_case(name, dt, d, rms, residual, bias, hot=True, quick=True):
    block, warps = _launch_shape(d)
    return dict(
        kernel="_row_norm_fwd_kernel", variant=f"{name},{'rms' if rms else 'ln'},mode={residual},D={d}",
        args=dict(x_ptr=dt, r_ptr=dt, w_ptr=dt, b_ptr=dt, y_ptr=dt, h_ptr=dt, n_cols=d,
                  stride_x=d, stride_r=d, eps=1e-5, RMS=rms, RESIDUAL=residual, HAS_BIAS=bias,
                  ONE_TILE=d <= block, BLOCK=block),
        warps=warps, hot=hot and dt == torch.bfloat16, quick=quick,
    )  # fmt: skip


AOT_CASES = [
    _norm_case("bf16", torch.bfloat16, 4096, True, 1, False),
    _norm_case("bf16", torch.bfloat16, 4096, True, 0, False),
    _norm_case("bf16", torch.bfloat16, 1792, False, 2, True),
    _norm_case("bf16", torch.bfloat16, 4096, False, 0, True),
    _norm_case("bf16", torch.bfloat16, 16384, True, 1, False, hot=False),
    _norm_case("fp16", torch.float16, 4096, True, 1, False),
    _norm_case("fp32", torch.float32, 1792, False, 2, True, quick=False),
]
