"""conv_compress: the adapter's 2x2 stride-2 conv over the vision tokens, as an implicit GEMM.

The public function: argument checks and backend choice. The ``haic_kernels::conv_compress``
custom op and its dispatch table live in ops.py.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import (
    check_dtype,
    check_int,
    check_no_grad,
    check_same_device,
    check_tensor,
)
from haic_kernels.ops.conv_compress.ops import DISPATCH

__all__ = ["BACKENDS", "DTYPES", "conv_compress"]

BACKENDS = ("auto", *DISPATCH.choices)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def conv_compress(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    grid: int,
    backend: str = "auto",
) -> torch.Tensor:
    """Drop CLS and apply ``nn.Conv2d(C, C_out, kernel_size=2, stride=2)`` to the token grid.

    Args:
        x: ``[F, 1 + g*g, C]`` (CLS first, as the vision tower outputs it; row 0 is skipped) or
            ``[F, g*g, C]``; tokens in row-major grid order. fp32, fp16 or bf16; any strides.
        weight: ``[C_out, C, 2, 2]``, the ``nn.Conv2d`` weight, in x's dtype.
        bias: ``[C_out]`` in x's dtype, or None.
        grid: ``g``, the side of the token grid (16 at 224 px); must be even.
        backend: ``"auto"`` | ``"torch"`` | ``"triton"`` | ``"cuda"``. ``"auto"`` picks, for CUDA
            tensors, the Triton implicit GEMM, else the compiled gather + cuBLAS, each only
            where usable and verified on that GPU (see ``haic_kernels.ops._common``), else
            PyTorch; for CPU tensors PyTorch. An explicit backend that cannot run raises
            `BackendUnavailable`.

    Returns:
        Contiguous ``[F, (g/2)^2, C_out]`` in x's dtype, rows in row-major order of the
        ``(g/2) x (g/2)`` output grid. With ``t0 = T - g*g`` (1 with CLS, else 0)::

            out[f, i*(g/2) + j, o] = bias[o] + sum_{kh, kw, c}
                x[f, t0 + (2i + kh)*g + 2j + kw, c] * weight[o, c, kh, kw]

        products accumulated in fp32, rounded once. The weight is re-laid-out once as
        ``[4C, C_out]`` in (kh, kw, c) order per tensor and content version and cached (see
        ``haic_kernels.ops._weight_cache``).

    Gradients: none. Raises RuntimeError when grad mode is on and an input requires grad: call
    it under ``torch.no_grad()`` or ``torch.inference_mode()``.

    Registered as ``torch.ops.haic_kernels.conv_compress`` (with a fake kernel), so
    ``torch.compile(fullgraph=True)`` traces through it.
    """
    check_tensor("x", x, dims=3, dtypes=DTYPES, shape_hint="[F, 1 + g*g, C] or [F, g*g, C]")
    g = check_int("grid", grid)
    if g % 2 != 0:
        raise ValueError(f"grid: the 2x2 stride-2 conv needs an even grid side, got grid={g}")
    _, tokens, c = x.shape
    if tokens not in (g * g, 1 + g * g):
        raise ValueError(
            f"x: expected {1 + g * g} tokens (CLS + {g}x{g} grid) or {g * g} in dim 1 for "
            f"grid={g}, got shape {tuple(x.shape)}"
        )
    check_tensor("weight", weight, dims=4, shape_hint="[C_out, C, 2, 2]")
    if weight.shape[1:] != (c, 2, 2):
        raise ValueError(
            f"weight: expected shape [C_out, {c}, 2, 2] (nn.Conv2d({c}, C_out, 2, stride=2)"
            f".weight, C = x.shape[-1]), got {tuple(weight.shape)}"
        )
    check_dtype("weight", weight, (x.dtype,))
    if bias is not None:
        check_tensor("bias", bias, dims=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(
                f"bias: expected shape ({weight.shape[0]},) (C_out), got {tuple(bias.shape)}"
            )
        check_dtype("bias", bias, (x.dtype,))
        bias = bias.contiguous()  # read as a raw pointer
    check_same_device(x=x, weight=weight, bias=bias)
    check_no_grad("conv_compress", x=x, weight=weight, bias=bias)
    chosen = DISPATCH.resolve(backend, x.device)
    return torch.ops.haic_kernels.conv_compress(x, weight, bias, g, chosen)
