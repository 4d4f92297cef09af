"""activation: bias + exact GELU, SiLU(gate) * up. Public functions, argument checks, backend
choice and the ``haic_kernels::activation`` custom op. Backends are imported lazily."""

from __future__ import annotations

import torch

from haic_kernels import backends
from haic_kernels.ops._common import check_same_device, check_tensor, resolve_backend

__all__ = ["BACKENDS", "DTYPES", "bias_gelu", "silu_mul"]

CHOICES = ("torch", "triton", "liger")
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
    if torch.is_grad_enabled() and (a.requires_grad or (b is not None and b.requires_grad)):
        raise RuntimeError("activation ops have no backward: call them under torch.no_grad()")
    chosen = resolve_backend("activation", backend, a.device, choices=CHOICES,
                             auto_order=("triton",))  # fmt: skip
    if chosen == "liger":
        if kind != "silu_mul":
            raise ValueError("backend: 'liger' serves silu_mul only")
        backends.require_on("liger", a.device)
    n = a.shape[-1]
    a2 = a.reshape(-1, n)
    b2 = b.reshape(-1, n) if kind == "silu_mul" else b
    out = torch.ops.haic_kernels.activation(a2, b2, kind, chosen)
    return out.view(*a.shape[:-1], n)


def _new_output(shape: tuple[int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation of the fast backends (tests replace it to poison the buffer)."""
    return torch.empty(shape, dtype=dtype, device=device)


@torch.library.custom_op("haic_kernels::activation", mutates_args=())
def _activation_op(
    a: torch.Tensor, b: torch.Tensor | None, kind: str, backend: str
) -> torch.Tensor:
    """a [T, N] -> [T, N]: ``gelu(a + b)`` (b a bias [N] or None) or ``silu(a) * b`` (b [T, N])."""
    if backend == "torch":
        from haic_kernels.ops.activation.reference import activation_reference

        return activation_reference(a, b, kind)
    if backend == "liger":
        from haic_kernels.ops.activation.liger import silu_mul_liger

        return silu_mul_liger(a, b)
    if backend != "triton":
        raise ValueError(f"backend: expected one of {CHOICES}, got {backend!r}")
    from haic_kernels.ops.activation.triton import activation_triton

    out = _new_output(tuple(a.shape), a.dtype, a.device)
    activation_triton(a, b, out, kind)
    return out


@_activation_op.register_fake
def _activation_fake(a, b, kind, backend):
    return a.new_empty(a.shape)
