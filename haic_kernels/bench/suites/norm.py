"""norm: add_rms_norm (LM) and add_layer_norm (vision post-norm) vs the models' eager PyTorch.

Cases for ``haic_kernels.ops.norm`` (backends "triton", "liger" for the RMSNorm; "torch" is the
op's reference) against baselines written here as the models write them: "torch eager" =
``h = x + r`` then CogVLM2's fp32 RMSNorm (upcast, square, mean, add, rsqrt, multiply, weight,
downcast), or EVA2's ``r + F.layer_norm(x)``; "torch.compile" of the same function. The issue
asks for >= 80% of the device's copy bandwidth. Work per call (T rows of D, e bytes): bytes =
add_rms_norm 4*T*D*e (x, r in; y, h out), add_layer_norm 3*T*D*e; the weights are D-sized;
flops ~ 4 and 7 per element. Sizes: tiny = fp32 on the CPU; full = bf16: decode (T=1 and a
batch of 8), a 24-frame prompt (T=1624, D=4096), the vision tower (T=6168, D=1792).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from haic_kernels.bench.runner import Case
from haic_kernels.bench.suites._util import row_op_cases

SUITE = "norm"
OP_MODULE = "haic_kernels.ops.norm"

# (name, kind, T, D, dtype); kind "rms" = add_rms_norm (eps 1e-5), "ln" = add_layer_norm (1e-6)
SHAPES: dict[str, list[tuple[str, str, int, int, torch.dtype]]] = {
    "tiny": [("tiny-rms-t33", "rms", 33, 96, torch.float32),
             ("tiny-ln-t33", "ln", 33, 96, torch.float32)],
    "full": [("decode-rms-t1", "rms", 1, 4096, torch.bfloat16),
             ("decode-rms-t8", "rms", 8, 4096, torch.bfloat16),
             ("prefill-rms-t1624", "rms", 1624, 4096, torch.bfloat16),
             ("vision-ln-t6168", "ln", 6168, 1792, torch.bfloat16)],
}  # fmt: skip


def add_rms_eager(x, r, w, eps: float = 1e-5):
    """The LM's ``h = x + attn`` then its RMSNorm, in eager PyTorch."""
    h = x + r
    f = h.to(torch.float32)
    f = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + eps)
    return (w.to(torch.float32) * f).to(x.dtype), h


def add_ln_eager(x, r, w, b, eps: float = 1e-6):
    """EVA2's ``h = x + input_layernorm(attn(x))``, in eager PyTorch."""
    return r + F.layer_norm(x, (x.shape[-1],), w, b, eps)


def counts(kind: str, t: int, d: int, dtype: torch.dtype) -> tuple[int, int]:
    e = torch.empty((), dtype=dtype).element_size()
    tensors = 4 if kind == "rms" else 3
    return (4 if kind == "rms" else 7) * t * d, tensors * t * d * e + 2 * d * e


def _factory(kind: str, t: int, d: int, dtype: torch.dtype):
    def make_inputs(device: torch.device) -> tuple[torch.Tensor, ...]:
        x = torch.randn(t, d, device=device).to(dtype)
        r = (3 * torch.randn(t, d, device=device)).to(dtype)
        w = (1 + 0.1 * torch.randn(d, device=device)).to(dtype)
        if kind == "rms":
            return x, r, w
        return x, r, w, torch.randn(d, device=device).to(dtype)

    return make_inputs


def _make_check(label: str, kind: str) -> Callable[[Any, tuple[Any, ...]], None]:
    def check(out: Any, inputs: tuple[Any, ...]) -> None:
        from haic_kernels.testing import assert_parity

        wide = [t.double() for t in inputs]
        if kind == "rms":
            y, h = out
            x, r, _ = inputs
            if not torch.equal(h, x + r):
                raise AssertionError(f"{label}: the residual output is not x + r in the dtype")
            same, _ = add_rms_eager(*inputs)
            ref, _ = add_rms_eager(*wide)
            assert_parity(y, same, ref, what=label)
        else:
            assert_parity(out, add_ln_eager(*inputs), add_ln_eager(*wide), what=label)

    return check


def _op_fn(op: Any, kind: str, backend: str) -> Callable[..., Any]:
    if kind == "rms":
        return lambda x, r, w: op.add_rms_norm(x, r, w, eps=1e-5, backend=backend)
    return lambda x, r, w, b: op.add_layer_norm(x, r, w, b, eps=1e-6, backend=backend)


def cases(size: str, device: torch.device) -> list[Case]:
    """Baselines first, then the op's backends, for every shape of ``size``."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    return row_op_cases(
        SUITE, SHAPES[size], torch.device(device), op_module=OP_MODULE,
        eager={"rms": add_rms_eager, "ln": add_ln_eager},
        backends={"rms": ("triton", "liger"), "ln": ("triton",)}, op_fn=_op_fn,
        factory=_factory, counts=counts, check=_make_check, width="D",
    )  # fmt: skip
