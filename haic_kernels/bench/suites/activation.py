"""activation: silu_mul (LM SwiGLU, fused [gate | up]) and bias_gelu (vision fc1) vs eager.

Cases for ``haic_kernels.ops.activation`` (backends "triton", "liger" for silu_mul) against
baselines written here as the models write them: "torch eager" = ``F.silu(g) * u`` over the
two halves of one gate/up GEMM output, or ``F.gelu(x + b)``; "torch.compile" of the same.
Work per call (T rows, N columns, e bytes): silu_mul reads 2*T*N*e and writes T*N*e; bias_gelu
reads and writes T*N*e (the bias is N-sized); flops ~ 4 (silu*mul) and ~ 10 (erf GELU) per
output. Sizes: tiny = fp32 on the CPU; full = bf16 decode (T=1, 8), a 24-frame prompt (T=1624,
N=14336) and the vision tower's MLP (T=6168, N=15360).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from haic_kernels.bench.runner import Case
from haic_kernels.bench.suites._util import row_op_cases

SUITE = "activation"
OP_MODULE = "haic_kernels.ops.activation"

# (name, kind, T, N, dtype)
SHAPES: dict[str, list[tuple[str, str, int, int, torch.dtype]]] = {
    "tiny": [("tiny-silu-t33", "silu_mul", 33, 160, torch.float32),
             ("tiny-gelu-t33", "gelu", 33, 160, torch.float32)],
    "full": [("decode-silu-t1", "silu_mul", 1, 14336, torch.bfloat16),
             ("decode-silu-t8", "silu_mul", 8, 14336, torch.bfloat16),
             ("prefill-silu-t1624", "silu_mul", 1624, 14336, torch.bfloat16),
             ("vision-gelu-t6168", "gelu", 6168, 15360, torch.bfloat16)],
}  # fmt: skip


def silu_mul_eager(gu: torch.Tensor) -> torch.Tensor:
    n = gu.shape[-1] // 2
    return F.silu(gu[..., :n]) * gu[..., n:]


def bias_gelu_eager(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.gelu(x + b)


_EAGER = {"silu_mul": silu_mul_eager, "gelu": bias_gelu_eager}


def counts(kind: str, t: int, n: int, dtype: torch.dtype) -> tuple[int, int]:
    e = torch.empty((), dtype=dtype).element_size()
    if kind == "silu_mul":
        return 4 * t * n, 3 * t * n * e
    return 10 * t * n, 2 * t * n * e + n * e


def _factory(kind: str, t: int, n: int, dtype: torch.dtype):
    def make_inputs(device: torch.device) -> tuple[torch.Tensor, ...]:
        if kind == "silu_mul":
            return ((3 * torch.randn(t, 2 * n, device=device)).to(dtype),)
        return (2 * torch.randn(t, n, device=device)).to(dtype), torch.randn(n, device=device).to(
            dtype
        )

    return make_inputs


def _make_check(label: str, kind: str) -> Callable[[Any, tuple[Any, ...]], None]:
    def check(out: Any, inputs: tuple[Any, ...]) -> None:
        from haic_kernels.testing import assert_parity

        eager = _EAGER[kind]
        assert_parity(out, eager(*inputs), eager(*(t.double() for t in inputs)), what=label)

    return check


def _op_fn(op: Any, kind: str, backend: str) -> Callable[..., Any]:
    if kind == "silu_mul":
        return lambda gu: op.silu_mul(gu, backend=backend)
    return lambda x, b: op.bias_gelu(x, b, backend=backend)


def cases(size: str, device: torch.device) -> list[Case]:
    """Baselines first, then the op's backends, for every shape of ``size``."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    return row_op_cases(
        SUITE, SHAPES[size], torch.device(device), op_module=OP_MODULE, eager=_EAGER,
        backends={"silu_mul": ("triton", "liger"), "gelu": ("triton",)}, op_fn=_op_fn,
        factory=_factory, counts=counts, check=_make_check, width="N",
    )  # fmt: skip
