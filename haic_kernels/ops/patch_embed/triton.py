"""patch_embed in Triton: one implicit-GEMM kernel from frames to [F, 1 + P, D].

The A operand (patch rows, K = 3*p*p columns in (c, kh, kw) order) is never materialized: each
K tile gathers its pixels straight from the frames (uint8 [F, H, W, 3] or float [F, 3, H, W], any
strides), normalizes them in registers and rounds them to the weight's dtype; B is the weight
re-laid-out once as [K_pad, D] (zero rows past K, cached, see `prepare_weight`); the epilogue
adds bias and positions, rounds once, and the programs owning a frame's first patch also write
its CLS row (cls + pos[0]).

Runs on CUDA tensors, or on CPU tensors under the interpreter (TRITON_INTERPRET=1 set before this
module is imported). Imported lazily by api.py; never imports the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from haic_kernels.ops._common import interpreting
from haic_kernels.ops.patch_embed.layout import weight_kd

# The cached weight's K is padded to a multiple of 64, the largest BLOCK_K below, so that every
# K tile's weight rows exist (zeros past K) and the B loads need no mask: 588 -> 640. The K loop
# stops at cdiv(K, BLOCK_K) tiles, so BLOCK_K = 32 runs 19 tiles (608), not 20.
K_PAD_MULTIPLE = 64

# Full size: M = F*256 (6144 per 24-frame video), N = 1792, K = 588. 128x128 and 128x256 tiles
# keep the tensor cores fed with N = 14 * 128 = 7 * 256 (no ragged N tile); a few K/stage/warp
# variants let the autotuner trade the prologue's gather latency against occupancy. Not yet swept
# on a GPU: the tuner picks per (M, N, K) at the first call.
_GPU_CONFIGS = [
    triton.Config(
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s
    )
    for bm, bn, bk, w, s in [
        (128, 128, 32, 4, 4),
        (128, 128, 64, 8, 3),
        (128, 256, 32, 8, 3),
        (128, 256, 64, 8, 3),
        (64, 128, 64, 4, 4),
        (256, 128, 32, 8, 3),
    ]
]
# The interpreter runs one program at a time in numpy: one small tile, no tuning (autotuning
# would run every config on every new shape, minutes on a CPU).
_INTERPRET_CONFIGS = [
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4)
]


def _configs() -> list[triton.Config]:
    return _INTERPRET_CONFIGS if interpreting() else _GPU_CONFIGS


@triton.autotune(configs=_configs(), key=["n_rows", "n_cols", "K"])
@triton.jit
def _patch_embed_fwd_kernel(
    x_ptr,  # frames: uint8 [F, H, W, 3] or float [F, 3, H, W], any strides
    w_ptr,  # [K_pad, D] contiguous, rows >= K zero
    bias_ptr,  # [D] (ignored when HAS_BIAS is false)
    cls_ptr,  # [D]
    pos_ptr,  # [1 + P, D] contiguous
    out_ptr,  # [F, 1 + P, D] contiguous
    n_rows,  # F * P
    n_cols,  # D
    K,  # 3 * p * p
    n_patches,  # P
    patches_w,  # W / p
    stride_f,
    stride_c,
    stride_h,
    stride_w,
    scale0,
    scale1,
    scale2,
    shift0,
    shift1,
    shift2,
    PATCH: tl.constexpr,
    NORMALIZE: tl.constexpr,  # uint8 frames: x * scale[c] + shift[c]
    HAS_BIAS: tl.constexpr,
    IEEE_FP32: tl.constexpr,  # fp32 weights: full-precision dot, not TF32
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
    rows64 = rows.to(tl.int64)  # frame offsets pass 2^31 bytes for long videos
    f = rows64 // n_patches
    patch = rows64 % n_patches
    ph = patch // patches_w
    pw = patch % patches_w
    row_off = f * stride_f + (ph * PATCH) * stride_h + (pw * PATCH) * stride_w

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ks0 = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + ks0[:, None] * n_cols + cols[None, :]
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        ks = k0 * BLOCK_K + ks0
        c = ks // (PATCH * PATCH)
        rem = ks % (PATCH * PATCH)
        kh = rem // PATCH
        kw = rem % PATCH
        k_ok = ks < K
        col_off = c * stride_c + kh * stride_h + kw * stride_w
        a_mask = row_ok[:, None] & k_ok[None, :]
        a = tl.load(x_ptr + row_off[:, None] + col_off[None, :], mask=a_mask, other=0)
        if NORMALIZE:
            scale = tl.where(c == 0, scale0, tl.where(c == 1, scale1, scale2))
            shift = tl.where(c == 0, shift0, tl.where(c == 1, shift1, shift2))
            a = a.to(tl.float32) * scale[None, :] + shift[None, :]
            a = tl.where(k_ok[None, :], a, 0.0)
        a = a.to(w_ptr.dtype.element_ty)
        b = tl.load(w_ptrs, mask=col_ok[None, :], other=0.0)
        if IEEE_FP32:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        w_ptrs += BLOCK_K * n_cols

    # Epilogue: + bias + pos[1 + patch], one rounding; output row f*(1+P) + 1 + patch.
    mask = row_ok[:, None] & col_ok[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    pos = tl.load(pos_ptr + (1 + patch)[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
    acc += pos.to(tl.float32)
    out_rows = f * (n_patches + 1) + 1 + patch
    out_ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + out_rows[:, None] * n_cols + cols[None, :], acc.to(out_ty), mask=mask)

    # CLS row of every frame whose first patch is in this tile (a masked, mostly empty store).
    cls = tl.load(cls_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    cls += tl.load(pos_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    first = row_ok & (patch == 0)
    cls_tile = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32) + cls[None, :]
    tl.store(
        out_ptr + (f * (n_patches + 1))[:, None] * n_cols + cols[None, :],
        cls_tile.to(out_ty),
        mask=first[:, None] & col_ok[None, :],
    )


def prepare_weight(weight: torch.Tensor) -> torch.Tensor:
    """[D, 3, p, p] -> contiguous [K_pad, D], K padded to a multiple of K_PAD_MULTIPLE."""
    return weight_kd(weight, K_PAD_MULTIPLE)


def patch_embed_triton(
    frames: torch.Tensor,
    w_kd: torch.Tensor,
    bias: torch.Tensor | None,
    cls: torch.Tensor,
    pos: torch.Tensor,
    out: torch.Tensor,
    patch_size: int,
    scale: tuple[float, float, float],
    shift: tuple[float, float, float],
) -> None:
    """Write patch_embed into ``out`` ([F, 1 + P, D], contiguous, the weight's dtype).

    ``frames``: uint8 [F, H, W, 3] (channel stride 1) or float [F, 3, H, W], any strides;
    ``w_kd`` from `prepare_weight`; ``bias`` [D] or None; ``cls`` [D]; ``pos`` [1 + P, D]
    contiguous. uint8 pixels become ``x * scale[c] + shift[c]`` (fp32), float ones are cast.
    The caller validates everything.
    """
    p = patch_size
    n = frames.shape[0]
    if frames.dtype == torch.uint8:
        _, h, w, _ = frames.shape
        sf, sh, sw, sc = frames.stride()
    else:
        _, _, h, w = frames.shape
        sf, sc, sh, sw = frames.stride()
    n_patches = (h // p) * (w // p)
    n_rows = n * n_patches
    d = w_kd.shape[1]
    if n == 0 or d == 0:
        return
    if n_patches == 0:
        out.copy_((cls.float() + pos[0].float()).to(out.dtype).expand_as(out))
        return

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(n_rows, meta["BLOCK_M"]) * triton.cdiv(d, meta["BLOCK_N"]),)

    _patch_embed_fwd_kernel[grid](
        frames,
        w_kd,
        bias if bias is not None else cls,
        cls,
        pos,
        out,
        n_rows,
        d,
        3 * p * p,
        n_patches,
        w // p,
        sf,
        sc,
        sh,
        sw,
        *(float(s) for s in scale),
        *(float(b) for b in shift),
        PATCH=p,
        NORMALIZE=frames.dtype == torch.uint8,
        HAS_BIAS=bias is not None,
        IEEE_FP32=w_kd.dtype == torch.float32,
    )


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# The full-size call: 24 frames of 224x224 -> [24, 257, 1792]; uint8 frames [F, H, W, 3]
# contiguous (channel stride 1: the runtime's constant) or normalized float [F, 3, H, W]
# (column stride 1). Quick: the first and the smallest (config 4, fits sm_80) tiles of the
# video path (uint8 frames) in bf16; --full: every config, dtype and frame kind.
AOT_CASES = [
    dict(
        kernel="_patch_embed_fwd_kernel", variant=f"{name},{'u8' if u8 else 'float'} frames",
        args=dict(x_ptr=torch.uint8 if u8 else dt, w_ptr=dt, bias_ptr=dt, cls_ptr=dt, pos_ptr=dt,
                  out_ptr=dt, n_rows=24 * 256, n_cols=1792, K=588, n_patches=256, patches_w=16,
                  stride_f=3 * 224 * 224, stride_c=1 if u8 else 224 * 224,
                  stride_h=224 * 3 if u8 else 224, stride_w=3 if u8 else 1,
                  **{f"{s}{c}": 0.5 for s in ("scale", "shift") for c in range(3)},
                  PATCH=14, NORMALIZE=u8, HAS_BIAS=True, IEEE_FP32=dt == torch.float32),
        configs=_GPU_CONFIGS, quick=(0, 4) if (u8 and dt == torch.bfloat16) else (),
        hot=u8 and dt == torch.bfloat16,
    )
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32))
    for u8 in (True, False)
]  # fmt: skip
