"""attention_decode: one query token per sequence against a KV cache (split-K CUDA kernel); GB/s.

Cases for ``haic_kernels.attention_with_kvcache(..., backend="cuda")`` (the split-K kernel that
decode calls go to, through the public op with its checks) and two baselines:
"torch SDPA" (q [B,Hq,1,D] against the cache viewed as [B,Hkv,S,D], enable_gqa=True; the
expanded-K/V fallback on torches without enable_gqa) and "flash_attn" (flash_attn_with_kvcache,
when importable). The cache is [B, S, Hkv, D] (flash-attn's layout).
Work per call: bytes = K + V read once (2*B*S*Hkv*D*itemsize, the floor: decode is memory-bound)
+ q read and out written; flops = 4*B*Hq*S*D (q.k and p.v). Report GB/s against HBM bandwidth.
Sizes: tiny = B1, 64 keys, 4/2 heads, D=64 (CPU: the CUDA cases skip with the reason, SDPA
runs); full = bf16, D=128, 32 query / 8 kv heads, 2k/4k/8k/16k cached tokens, batch 1 and 8.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from haic_kernels.bench.runner import Case
from haic_kernels.bench.suites._util import load_op, probe, raiser

SUITE = "attention_decode"
OP_MODULE = "haic_kernels.ops.attention"

# (name, batch, cached tokens, q heads, kv heads, head dim, dtype)
SHAPES: dict[str, list[tuple[str, int, int, int, int, int, torch.dtype]]] = {
    "tiny": [("tiny-b1-s64", 1, 64, 4, 2, 64, torch.bfloat16)],
    "full": [
        (f"b{b}-s{s // 1024}k", b, s, 32, 8, 128, torch.bfloat16)
        for b in (1, 8)
        for s in (2048, 4096, 8192, 16384)
    ],
}


def counts(b: int, s: int, hq: int, hkv: int, d: int, dtype: torch.dtype) -> tuple[int, int]:
    """(flops, bytes) of one decode call."""
    item = torch.empty((), dtype=dtype).element_size()
    kv = 2 * b * s * hkv * d * item
    q_out = 2 * b * hq * d * item
    return 4 * b * hq * s * d, kv + q_out


def decode_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B,Hq,D], k/v [B,S,Hkv,D] -> [B,Hq,D] through F.scaled_dot_product_attention."""
    kt, vt = k.transpose(1, 2), v.transpose(1, 2)  # [B, Hkv, S, D] views
    try:
        out = F.scaled_dot_product_attention(q[:, :, None], kt, vt, scale=scale, enable_gqa=True)
    except TypeError:  # torch < 2.5: no enable_gqa; repeat the kv heads
        r = q.shape[1] // k.shape[2]
        kt, vt = kt.repeat_interleave(r, dim=1), vt.repeat_interleave(r, dim=1)
        out = F.scaled_dot_product_attention(q[:, :, None], kt, vt, scale=scale)
    return out[:, :, 0]


def _decode_reference(q, k, v, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """Softmax over all keys computed in ``dtype`` (float64: the oracle)."""
    r = q.shape[1] // k.shape[2]
    kk = k.to(dtype).repeat_interleave(r, dim=2)  # [B, S, Hq, D]
    vv = v.to(dtype).repeat_interleave(r, dim=2)
    scores = torch.einsum("bhd,bshd->bhs", q.to(dtype), kk) * scale
    return torch.einsum("bhs,bshd->bhd", torch.softmax(scores, dim=-1), vv)


def _flash_attn_fn() -> tuple[Callable[..., torch.Tensor] | None, str | None]:
    try:
        from flash_attn import flash_attn_with_kvcache
    except Exception as exc:  # ImportError, or a build that fails to load its CUDA library
        return None, f"flash_attn is not importable here ({type(exc).__name__}: {exc})"

    def fn(q, k, v, scale):
        return flash_attn_with_kvcache(q[:, None], k, v, softmax_scale=scale)[:, 0]

    return fn, None


def _make_check(label: str, scale: float) -> Callable[[Any, tuple[Any, ...]], None]:
    def check(out: Any, inputs: tuple[Any, ...]) -> None:
        from haic_kernels.testing import assert_parity

        q, k, v = inputs[:3]
        ref = _decode_reference(q, k, v, scale, torch.float64)
        if not isinstance(out, torch.Tensor) or out.shape != q.shape or out.dtype != q.dtype:
            got = (tuple(out.shape), out.dtype) if isinstance(out, torch.Tensor) else type(out)
            raise AssertionError(f"{label}: expected {tuple(q.shape)} {q.dtype}, got {got}")
        same = _decode_reference(q, k, v, scale, q.dtype)
        assert_parity(out, same, ref, what=label)

    return check


def _inputs_factory(b: int, s: int, hq: int, hkv: int, d: int, dtype: torch.dtype):
    def make_inputs(device: torch.device) -> tuple[torch.Tensor, ...]:
        q = torch.randn(b, hq, d, dtype=dtype, device=device)
        k = torch.randn(b, s, hkv, d, dtype=dtype, device=device)
        v = torch.randn(b, s, hkv, d, dtype=dtype, device=device)
        lens = torch.full((b,), s, dtype=torch.int32, device=device)  # every cached row valid
        return q, k, v, lens

    return make_inputs


def _cuda_skip(op: Callable[..., None] | None, device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"the CUDA decode kernel needs a CUDA device; benchmarking on {device}"

    def call() -> None:
        q = torch.randn(1, 1, 2, 64, dtype=torch.bfloat16, device=device)
        k = torch.randn(1, 8, 1, 64, dtype=torch.bfloat16, device=device)
        lens = torch.full((1,), 8, dtype=torch.int32, device=device)
        op(q, k, k, lens, scale=0.125, backend="cuda")

    return probe((SUITE, "cuda", str(device)), call)


def cases(size: str, device: torch.device) -> list[Case]:
    """Baselines first, then the CUDA kernel, for every shape of ``size``."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    device = torch.device(device)
    op, op_skip, op_error = load_op(OP_MODULE, "attention_with_kvcache")
    fa_fn, fa_skip = _flash_attn_fn()
    if fa_skip is None and device.type != "cuda":
        fa_skip = f"flash_attn needs a CUDA device; benchmarking on {device}"
    out: list[Case] = []
    for name, b, s, hq, hkv, d, dtype in SHAPES[size]:
        flops, nbytes = counts(b, s, hq, hkv, d, dtype)
        scale = d**-0.5
        common = dict(
            suite=SUITE,
            name=name,
            shapes={"B": b, "S": s, "Hq": hq, "Hkv": hkv, "D": d},
            dtype=str(dtype).removeprefix("torch."),
            flops=flops,
            bytes=nbytes,
            make_inputs=_inputs_factory(b, s, hq, hkv, d, dtype),
            # 5-30 us per call at these sizes: replay a graph so launch gaps do not dominate.
            cuda_graph=size == "full",
        )
        out.append(
            Case(
                backend="torch SDPA",
                fn=lambda q, k, v, lens, sc=scale: decode_sdpa(q, k, v, sc),
                baseline=True,
                check=_make_check(f"{SUITE} torch SDPA {name}", scale),
                **common,
            )
        )
        out.append(
            Case(
                backend="flash_attn",
                fn=lambda q, k, v, lens, sc=scale: fa_fn(q, k, v, sc),
                baseline=True,
                skip_reason=fa_skip,
                check=_make_check(f"{SUITE} flash_attn {name}", scale),
                **common,
            )
        )
        if op_error is not None:
            out.append(Case(backend="cuda", fn=raiser(OP_MODULE, op_error), **common))
            continue
        skip = op_skip or _cuda_skip(op, device)

        def run_cuda(q, k, v, lens, sc=scale):
            return op(q[:, None], k, v, lens, scale=sc, backend="cuda")[:, 0]

        out.append(
            Case(
                backend="cuda",
                fn=run_cuda,
                skip_reason=skip,
                check=_make_check(f"{SUITE} cuda {name}", scale),
                **common,
            )
        )
    return out
