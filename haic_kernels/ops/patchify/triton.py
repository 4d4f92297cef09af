"""patchify in Triton: uint8 frames [F, H, W, 3] -> normalized patch rows [F, P, K_pad].

Runs on CUDA tensors, or on CPU tensors under the interpreter (TRITON_INTERPRET=1 set before this
module is imported). Imported lazily by api.py; never imports the reference.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Tile of 32 patch rows x 128 columns per program. 128 columns: K=588 (p=14) pads to 640, 8% idle
# lanes, where one power-of-two tile over the whole row (1024) would leave 43% idle. 32 rows:
# 4096 elements per program, 32 per thread at 4 warps, enough independent byte loads in flight to
# cover latency. Chosen from that arithmetic; not yet swept on a GPU.
_BLOCK_ROWS = 32
_BLOCK_K = 128
_NUM_WARPS = 4


@triton.jit
def _patchify_fwd_kernel(
    frames_ptr,
    out_ptr,
    n_rows,  # F * P
    n_patches,  # P = (H/p) * (W/p)
    patches_w,  # W/p
    stride_f,
    stride_h,
    stride_w,  # channel stride is 1 (checked by the caller)
    k_pad,
    scale0,
    scale1,
    scale2,
    shift0,
    shift1,
    shift2,
    PATCH: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # Row r = (f, ph, pw) of the output, column k = c*p*p + kh*p + kw:
    # out[r, k] = frames[f, ph*p + kh, pw*p + kw, c] * scale[c] + shift[c], 0 for k >= 3*p*p.
    pid_r = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_r * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < n_rows
    rows64 = rows.to(tl.int64)  # frame offsets exceed 2^31 for long videos at high resolution
    f = rows64 // n_patches
    patch = rows64 % n_patches
    ph = patch // patches_w
    pw = patch % patches_w
    c = ks // (PATCH * PATCH)
    rem = ks % (PATCH * PATCH)
    kh = rem // PATCH
    kw = rem % PATCH
    k_real = ks < 3 * PATCH * PATCH

    row_off = f * stride_f + (ph * PATCH) * stride_h + (pw * PATCH) * stride_w
    col_off = kh * stride_h + kw * stride_w + c
    mask = row_ok[:, None] & k_real[None, :]
    x = tl.load(frames_ptr + row_off[:, None] + col_off[None, :], mask=mask, other=0)
    scale = tl.where(c == 0, scale0, tl.where(c == 1, scale1, scale2))
    shift = tl.where(c == 0, shift0, tl.where(c == 1, shift1, shift2))
    y = x.to(tl.float32) * scale[None, :] + shift[None, :]
    y = tl.where(k_real[None, :], y, 0.0)
    out_mask = row_ok[:, None] & (ks < k_pad)[None, :]
    tl.store(
        out_ptr + rows64[:, None] * k_pad + ks[None, :],
        y.to(out_ptr.dtype.element_ty),
        mask=out_mask,
    )


def patchify_triton(
    frames,
    out,
    patch_size: int,
    scale: tuple[float, float, float],
    shift: tuple[float, float, float],
) -> None:
    """Write patchify(frames) into ``out`` ([F, P, K_pad], contiguous, float32/16 or bfloat16).

    ``frames``: uint8 [F, H, W, 3], channel stride 1, H and W multiples of ``patch_size``
    (the caller validates). ``out = frames * scale[c] + shift[c]`` in fp32, one rounding.
    """
    n, h, w, _ = frames.shape
    p = patch_size
    n_patches = (h // p) * (w // p)
    n_rows = n * n_patches
    k_pad = out.shape[-1]
    if n_rows == 0:
        return
    grid = (triton.cdiv(n_rows, _BLOCK_ROWS), triton.cdiv(k_pad, _BLOCK_K))
    _patchify_fwd_kernel[grid](
        frames,
        out,
        n_rows,
        n_patches,
        w // p,
        frames.stride(0),
        frames.stride(1),
        frames.stride(2),
        k_pad,
        *(float(s) for s in scale),
        *(float(b) for b in shift),
        PATCH=p,
        BLOCK_ROWS=_BLOCK_ROWS,
        BLOCK_K=_BLOCK_K,
        num_warps=_NUM_WARPS,
    )


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# The full-size call: 24 contiguous uint8 frames [24, 224, 224, 3], rows padded to 592 (k_multiple
# 8); the output dtype is the GEMM's.
AOT_CASES = [
    dict(
        kernel="_patchify_fwd_kernel", variant=name,
        args=dict(frames_ptr="*u8", out_ptr=dt, n_rows=24 * 256, n_patches=256,
                  patches_w=16, stride_f=224 * 224 * 3, stride_h=224 * 3, stride_w=3, k_pad=592,
                  **{f"{s}{c}": 0.5 for s in ("scale", "shift") for c in range(3)},
                  PATCH=14, BLOCK_ROWS=_BLOCK_ROWS, BLOCK_K=_BLOCK_K),
        warps=_NUM_WARPS, hot=name == "bf16",
    )
    for name, dt in (("bf16", "*bf16"), ("fp16", "*fp16"), ("fp32", "*fp32"))
]  # fmt: skip
