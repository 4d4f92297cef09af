"""activation: bias + exact GELU, SiLU(gate) * up. Public functions, argument checks and backend
choice; the ``haic_kernels::activation`` custom op and its dispatch table live in ops.py."""

from __future__ import annotations

import math

import torch

from haic_kernels.ops._common import check_no_grad, check_same_device, check_tensor
from haic_kernels.ops.activation.ops import DISPATCH

__all__ = ["BACKENDS", "DTYPES", "bias_gelu", "silu_mul"]

CHOICES = DISPATCH.choices
BACKENDS = ("auto", *CHOICES)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def bias_gelu(
    x: torch.Tensor, bias: torch.Tensor | None = None, *, backend: str = "auto"
) -> torch.Tensor:
    """``gelu(x + bias)`` with the exact erf GELU (EVA2-CLIP's ``"gelu"``), in fp32, one rounding.

    Meant for the output of a bias-free fc1 GEMM (cuBLAS): the bias joins the one elementwise
    pass the GELU needs anyway. cuBLASLt's GELU epilogue is the tanh approximation, not this.

    Args:
        x: ``[..., N]`` float32/16 or bfloat16, unit last stride (rows may be strided).
        bias: ``[N]`` any float dtype, or None.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"``.

    Returns:
        ``[..., N]`` contiguous, x's dtype: ``dtype(0.5 * v * (1 + erf(v / sqrt(2))))``,
        ``v = float32(x) + float32(bias)``.
    """
    check_tensor("x", x, dtypes=DTYPES)
    if bias is not None:
        check_tensor("bias", bias, dims=1, dtypes=DTYPES, shape_hint="[N]")
        if x.dim() == 0 or bias.shape[0] != x.shape[-1]:
            raise ValueError(f"bias: expected shape ({x.shape[-1]},) (x's last dim), got "
                             f"{tuple(bias.shape)}")  # fmt: skip
    check_same_device(x=x, bias=bias)
    return _run("gelu", x, bias, backend)


def silu_mul(
    gate: torch.Tensor, up: torch.Tensor | None = None, *, backend: str = "auto"
) -> torch.Tensor:
    """SwiGLU's ``silu(gate) * up`` in fp32, one rounding.

    Args:
        gate: ``[..., N]`` float32/16 or bfloat16; or, with ``up=None``, ``[..., 2N]`` holding
            ``[gate | up]`` (one GEMM over ``cat([gate_proj.weight, up_proj.weight])``: CogVLM2
            keeps the two as separate ``[N, D]`` weights, which concatenate along N). Read in
            place, no split copies.
        up: ``[..., N]``, gate's shape and dtype, or None.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` | ``"liger"`` (Liger-Kernel, CUDA only,
            optional dependency; never chosen by auto).

    Returns:
        ``[..., N]`` contiguous, gate's dtype: ``dtype(g * sigmoid(g) * u)`` with g, u in fp32.
    """
    check_tensor("gate", gate, dtypes=DTYPES)
    if gate.dim() == 0:
        raise ValueError("gate: expected [..., N] or [..., 2N], got a 0-dim tensor")
    if up is None:
        if gate.shape[-1] % 2:
            raise ValueError(f"gate: with up=None the last dim holds [gate | up] and must be "
                             f"even, got shape {tuple(gate.shape)}")  # fmt: skip
        n = gate.shape[-1] // 2
        gate, up = gate[..., :n], gate[..., n:]
    else:
        check_tensor("up", up, dtypes=(gate.dtype,))
        if up.shape != gate.shape:
            raise ValueError(
                f"up: expected gate's shape {tuple(gate.shape)}, got {tuple(up.shape)}"
            )
        check_same_device(gate=gate, up=up)
    return _run("silu_mul", gate, up, backend)


def _run(kind: str, a: torch.Tensor, b: torch.Tensor | None, backend: str) -> torch.Tensor:
    if kind == "gelu":
        check_no_grad("bias_gelu", x=a, bias=b)
    else:
        check_no_grad("silu_mul", gate=a, up=b)
    if backend == "liger" and kind != "silu_mul":  # no device makes this call expressible
        raise ValueError("backend: 'liger' serves silu_mul only")
    chosen = DISPATCH.resolve(backend, a.device)
    n, rows = a.shape[-1], math.prod(a.shape[:-1])  # not reshape(-1, n): n may be 0
    a2 = a.reshape(rows, n)
    b2 = b.reshape(rows, n) if kind == "silu_mul" else b
    out = torch.ops.haic_kernels.activation(a2, b2, kind, chosen)
    return out.view(*a.shape[:-1], n)
