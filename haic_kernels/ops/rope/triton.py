"""rope in Triton: one program per (token, head group): read the rows once, rotate, write.

Runs on CUDA tensors, or on CPU tensors under the interpreter (TRITON_INTERPRET=1 set before this
module is imported). Imported lazily by api.py; never imports the reference.

The fused form reads one row of the QKV projection output [T, (Hq + 2 Hkv) * D] per token and
writes q [T, Hq, D] and k [T, Hkv, D] rotated and v [T, Hkv, D] copied, each contiguous (the
layout attention and the KV cache want): one read and one write of every element, where
split + transpose + two rotary passes + contiguous moves each element 4-6 times.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# One token's group is at most 32 heads x 128 = 4096 elements (q at full size): 4 warps give 32
# elements per thread, enough loads in flight; the kernel is memory-bound.
_NUM_WARPS = 4


@triton.jit
def _rope_group(
    in_ptr,
    out_ptr,
    n_heads,
    cos,
    sin,
    HALF: tl.constexpr,
    HALF_P2: tl.constexpr,
    H_P2: tl.constexpr,
    ROTATE: tl.constexpr,
    INTERLEAVED: tl.constexpr,
):
    # Pairs (x1, x2) = (i, i + D/2) rotate-half, (2i, 2i + 1) interleaved:
    # out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin (x * cos + rot(x) * sin, rot(a, b) = (-b, a)).
    h = tl.arange(0, H_P2)[:, None]
    i = tl.arange(0, HALF_P2)[None, :]
    m = (h < n_heads) & (i < HALF)
    if INTERLEAVED:
        i1 = 2 * i
        i2 = 2 * i + 1
    else:
        i1 = i
        i2 = i + HALF
    base = h * (2 * HALF)
    x1 = tl.load(in_ptr + base + i1, mask=m, other=0.0)
    x2 = tl.load(in_ptr + base + i2, mask=m, other=0.0)
    if ROTATE:
        f1 = x1.to(tl.float32)
        f2 = x2.to(tl.float32)
        o1 = f1 * cos - f2 * sin
        o2 = f2 * cos + f1 * sin
        tl.store(out_ptr + base + i1, o1.to(out_ptr.dtype.element_ty), mask=m)
        tl.store(out_ptr + base + i2, o2.to(out_ptr.dtype.element_ty), mask=m)
    else:
        tl.store(out_ptr + base + i1, x1, mask=m)
        tl.store(out_ptr + base + i2, x2, mask=m)


@triton.jit
def _rope_fwd_kernel(
    x_ptr,
    pos_ptr,
    inv_freq_ptr,
    out0_ptr,
    out1_ptr,
    out2_ptr,
    stride_x,
    h0,
    h1,
    h2,
    lens_ptr,
    stride_cb,
    stride_cs,
    cache_rows,
    HALF: tl.constexpr,
    HALF_P2: tl.constexpr,
    H_P2: tl.constexpr,
    ROT0: tl.constexpr,
    ROT1: tl.constexpr,
    ROT2: tl.constexpr,
    ROUND: tl.constexpr,  # round cos/sin to x's dtype first, as the model's rotary module does
    INTERLEAVED: tl.constexpr,
    RELEASE: tl.constexpr,  # round pos and pos * inv_freq to x's dtype (the release's bf16 angles)
    TO_CACHE: tl.constexpr = False,  # groups 1, 2 go to row lens[t] of sequence t of a KV cache
):
    t = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1)
    pos = tl.load(pos_ptr + t).to(tl.float32)
    i = tl.arange(0, HALF_P2)[None, :]
    inv = tl.load(inv_freq_ptr + i, mask=i < HALF, other=0.0)
    if RELEASE:
        # inv holds values of x's dtype; the fp32 product of two such values is exact, so one
        # rounding of it is the release's low-precision multiply.
        pos = pos.to(x_ptr.dtype.element_ty).to(tl.float32)
        angle = (pos * inv).to(x_ptr.dtype.element_ty).to(tl.float32)
    else:
        angle = pos * inv
    cos = tl.cos(angle)
    sin = tl.sin(angle)
    if ROUND:
        cos = cos.to(x_ptr.dtype.element_ty).to(tl.float32)
        sin = sin.to(x_ptr.dtype.element_ty).to(tl.float32)
    d = 2 * HALF
    row = x_ptr + t * stride_x
    off1 = t * h1 * d
    off2 = t * h2 * d
    if TO_CACHE:
        # Clamped: a length the (asynchronous) device assert rejects cannot write outside.
        r = tl.minimum(tl.maximum(tl.load(lens_ptr + t).to(tl.int64), 0), cache_rows - 1)
        off1 = t * stride_cb + r * stride_cs
        off2 = off1
    if g == 0:
        _rope_group(row, out0_ptr + t * h0 * d, h0, cos, sin, HALF, HALF_P2, H_P2, ROT0,
                    INTERLEAVED)  # fmt: skip
    elif g == 1:
        _rope_group(row + h0 * d, out1_ptr + off1, h1, cos, sin, HALF, HALF_P2, H_P2, ROT1,
                    INTERLEAVED)  # fmt: skip
    else:
        _rope_group(row + (h0 + h1) * d, out2_ptr + off2, h2, cos, sin, HALF, HALF_P2,
                    H_P2, ROT2, INTERLEAVED)  # fmt: skip


def rope_triton(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    outs: list[torch.Tensor],
    rotate: list[bool],
    interleaved: bool,
    release: bool = False,
    cache_seqlens: torch.Tensor | None = None,
) -> None:
    """Write the 1-3 head groups of ``x`` [T, sum(h) * D] (unit last stride) into ``outs``
    ([T, h_g, D] contiguous each), rotated where ``rotate[g]``. position_ids int [T],
    inv_freq fp32 [D/2] contiguous (the caller validates). ``release``: positions and angles
    rounded to x's dtype (x not fp32). ``cache_seqlens`` (int32 [T]): ``outs[1:]`` are KV caches
    [T, S, h, D] (same strides, each row's heads contiguous), written at row
    ``cache_seqlens[t]`` of sequence t."""
    t = x.shape[0]
    groups = len(outs)
    if t == 0 or groups == 0:
        return
    half = inv_freq.shape[0]
    to_cache = cache_seqlens is not None
    heads = [o.shape[-2] for o in outs] + [0] * (3 - groups)
    cache = outs[1] if to_cache else x
    lens = cache_seqlens if to_cache else position_ids
    cache_args = (lens, cache.stride(0), cache.stride(1), cache.shape[1]) if to_cache else (
        lens, 0, 0, 1)  # fmt: skip
    ptrs = list(outs) + [outs[0]] * (3 - groups)
    rot = list(rotate) + [False] * (3 - groups)
    _rope_fwd_kernel[(t, groups)](
        x,
        position_ids,
        inv_freq,
        *ptrs,
        x.stride(0),
        *heads,
        *cache_args,
        HALF=half,
        HALF_P2=triton.next_power_of_2(half),
        H_P2=triton.next_power_of_2(max(heads)),
        ROT0=rot[0],
        ROT1=rot[1],
        ROT2=rot[2],
        ROUND=x.dtype != torch.float32,
        INTERLEAVED=interleaved,
        RELEASE=release,
        TO_CACHE=to_cache,
        num_warps=_NUM_WARPS,
    )


# ---- ahead-of-time compile cases (haic_kernels._aot_check) ------------------------------------
# Llama-3-8B QKV rows [T, 6144] (32 q heads, 8 k, 8 v of D = 128: HALF 64, H_P2 32), int64
# positions; the interleaved form only in bf16 for the quick run.
AOT_CASES = [
    dict(
        kernel="_rope_fwd_kernel", variant=f"{name},interleaved={inter},release={release}",
        args=dict(x_ptr=dt, pos_ptr=torch.int64, inv_freq_ptr=torch.float32, out0_ptr=dt,
                  out1_ptr=dt, out2_ptr=dt, stride_x=6144, h0=32, h1=8, h2=8,
                  lens_ptr=torch.int64, stride_cb=0, stride_cs=0, cache_rows=1, HALF=64,
                  HALF_P2=64, H_P2=32, ROT0=True, ROT1=True, ROT2=False,
                  ROUND=dt != torch.float32, INTERLEAVED=inter, RELEASE=release,
                  TO_CACHE=False),
        warps=_NUM_WARPS, quick=not inter or dt == torch.bfloat16,
        hot=dt == torch.bfloat16 and not inter,
    )
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32))
    for inter in (False, True)
    # rope_precision="release" (low-precision angles) is the model's rotate-half path
    for release in ((False, True) if dt != torch.float32 and not inter else (False,))
] + [
    # The decode step: one token per sequence, k and v into the caches [B, 1688, 8, 128].
    dict(
        kernel="_rope_fwd_kernel", variant="bf16,to cache,release=True",
        args=dict(x_ptr=torch.bfloat16, pos_ptr=torch.int64, inv_freq_ptr=torch.bfloat16,
                  out0_ptr=torch.bfloat16, out1_ptr=torch.bfloat16, out2_ptr=torch.bfloat16,
                  stride_x=6144, h0=32, h1=8, h2=8, lens_ptr=torch.int32,
                  stride_cb=1688 * 1024, stride_cs=1024, cache_rows=1688, HALF=64, HALF_P2=64,
                  H_P2=32, ROT0=True, ROT1=True, ROT2=False, ROUND=True, INTERLEAVED=False,
                  RELEASE=True, TO_CACHE=True),
        warps=_NUM_WARPS, hot=True,
    ),
]  # fmt: skip
