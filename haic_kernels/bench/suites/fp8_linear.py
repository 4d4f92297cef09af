"""fp8_linear: E4M3 linears (torch._scaled_mm, row-wise scales) vs the bf16 F.linear (cuBLAS).

Cases for ``haic_kernels.ops.fp8_linear.fp8_linear`` (backend "scaled_mm", which includes the
per-token activation quantization, and "emulated", the CPU path) against "torch bf16" =
``F.linear`` in the model's dtype. The weight is prepared once per shape (`Fp8Weight`), as a
model does at load. The issue asks for >= 2x TTFT with fp8 (so ~2x on the big GEMMs) and a
decode step bounded by the halved weight bytes. Work per call: flops = 2*M*N*K; bytes = the
weight once (N*K*1 for fp8, *2 for bf16, counted per backend: the floor each must move) +
activations in (M*K*2) and out (M*N*2). Sizes: tiny = fp32 on the CPU (emulated only); full =
bf16 at the LM's decode (M=1, 8) and prefill (M=1624) shapes and the vision MLP (M=6168).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from haic_kernels.bench.runner import Case
from haic_kernels.bench.suites._util import load_op, probe, raiser

SUITE = "fp8_linear"
OP_MODULE = "haic_kernels.ops.fp8_linear"

# (name, M, K, N, dtype)
SHAPES: dict[str, list[tuple[str, int, int, int, torch.dtype]]] = {
    "tiny": [("tiny-m33", 33, 96, 80, torch.float32)],
    "full": [("decode-qkv-m1", 1, 4096, 6144, torch.bfloat16),
             ("decode-gateup-m8", 8, 4096, 28672, torch.bfloat16),
             ("prefill-gateup-m1624", 1624, 4096, 28672, torch.bfloat16),
             ("prefill-down-m1624", 1624, 14336, 4096, torch.bfloat16),
             ("vision-fc1-m6168", 6168, 1792, 15360, torch.bfloat16),
             ("vision-fc2-m6168", 6168, 15360, 1792, torch.bfloat16)],
}  # fmt: skip


class _Weights:
    """(bf16 weight, Fp8Weight) per (shape, device), made once."""

    _cache: ClassVar[dict[Any, tuple[torch.Tensor, Any]]] = {}

    @classmethod
    def get(cls, op: Any, k: int, n: int, dtype: torch.dtype, device: torch.device):
        key = (k, n, dtype, str(device))
        if key not in cls._cache:
            gen = torch.Generator(device=device).manual_seed(0)
            w = (torch.randn(n, k, device=device, generator=gen) / k**0.5).to(dtype)
            cls._cache[key] = (w, op.Fp8Weight.from_linear(w))
        return cls._cache[key]


def counts(m: int, k: int, n: int, weight_bytes: int) -> tuple[int, int]:
    return 2 * m * n * k, n * k * weight_bytes + 2 * (m * k + m * n)


def _factory(m: int, k: int, dtype: torch.dtype):
    def make_inputs(device: torch.device) -> tuple[torch.Tensor]:
        return (torch.randn(m, k, device=device).to(dtype),)

    return make_inputs


def _make_check(label: str, op: Any, k: int, n: int, dtype: torch.dtype, device: torch.device):
    def check(out: Any, inputs: tuple[Any, ...]) -> None:
        (x,) = inputs
        _, pw = _Weights.get(op, k, n, dtype, device)
        emu = op.fp8_linear(x.float(), pw, backend="emulated")  # same quantized operands
        torch.testing.assert_close(out.float(), emu, rtol=2**-7, atol=1e-2 * emu.abs().mean())

    return check


def cases(size: str, device: torch.device) -> list[Case]:
    """The bf16 linear (baseline), then the fp8 backends, for every shape of ``size``."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    device = torch.device(device)
    op, op_skip, op_error = load_op(OP_MODULE, "api")
    out: list[Case] = []
    for name, m, k, n, dtype in SHAPES[size]:
        base = dict(suite=SUITE, name=name, shapes={"M": m, "K": k, "N": n},
                    dtype=str(dtype).removeprefix("torch."), make_inputs=_factory(m, k, dtype),
                    cuda_graph=m <= 8)  # fmt: skip
        flops, nbytes = counts(m, k, n, torch.empty((), dtype=dtype).element_size())
        if op_error is not None:
            out.append(Case(backend="scaled_mm", fn=raiser(OP_MODULE, op_error), flops=flops,
                            bytes=nbytes, **base))  # fmt: skip
            continue

        def dense(x, k=k, n=n, d=dtype):
            return F.linear(x, _Weights.get(op, k, n, d, x.device)[0])

        short = str(base["dtype"]).replace("bfloat", "bf").replace("float", "fp")
        out.append(Case(backend=f"torch {short}", fn=dense, baseline=True, flops=flops,
                        bytes=nbytes, **base))  # fmt: skip
        flops8, bytes8 = counts(m, k, n, 1)
        for b in ("scaled_mm",) if size == "full" else ("emulated",):

            def fn(x, k=k, n=n, d=dtype, b=b):
                return op.fp8_linear(x, _Weights.get(op, k, n, d, x.device)[1], backend=b)

            skip = op_skip or probe((SUITE, b, str(device), dtype), lambda b=b, d=dtype: (
                op.fp8_linear(torch.randn(2, 32, device=device).to(d), op.Fp8Weight.from_linear(
                    torch.randn(16, 32, device=device).to(d)), backend=b)))  # fmt: skip
            out.append(Case(backend=b, fn=fn, skip_reason=skip, flops=flops8, bytes=bytes8,
                            check=_make_check(f"{SUITE} {b} {name}", op, k, n, dtype, device),
                            **base))  # fmt: skip
    return out
