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
from haic_kernels.bench.suites._util import load_op, probe, raiser

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
_compiled: dict[str, Callable[..., Any]] = {}


def _compiled_fn(kind: str) -> Callable[..., Any]:
    if kind not in _compiled:
        _compiled[kind] = torch.compile(_EAGER[kind])
    return _compiled[kind]


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
    device = torch.device(device)
    op, op_skip, op_error = load_op(OP_MODULE, "api")
    out: list[Case] = []
    for name, kind, t, n, dtype in SHAPES[size]:
        flops, nbytes = counts(kind, t, n, dtype)
        common = dict(
            suite=SUITE, name=name, shapes={"T": t, "N": n}, flops=flops, bytes=nbytes,
            dtype=str(dtype).removeprefix("torch."), make_inputs=_factory(kind, t, n, dtype),
            cuda_graph=t <= 8,
        )  # fmt: skip
        out.append(Case(backend="torch eager", fn=_EAGER[kind], baseline=True, **common))
        out.append(Case(backend="torch.compile", fn=lambda *a, k=kind: _compiled_fn(k)(*a),
                        baseline=True, check=_make_check(f"{SUITE} compile {name}", kind),
                        **common))  # fmt: skip
        for b in ("triton", "liger") if kind == "silu_mul" else ("triton",):
            if op_error is not None:
                out.append(Case(backend=b, fn=raiser(OP_MODULE, op_error), **common))
                continue
            fn = _op_fn(op, kind, b)
            skip = op_skip
            if skip is None:
                probe_in = _factory(kind, 2, 64, dtype)(device)
                skip = probe((SUITE, kind, b, str(device), dtype), lambda f=fn, a=probe_in: f(*a))
            out.append(Case(backend=b, fn=fn, skip_reason=skip,
                            check=_make_check(f"{SUITE} {b} {name}", kind), **common))  # fmt: skip
    return out
