"""conv_compress: the adapter's 2x2 stride-2 conv over the vision tokens, as an implicit GEMM.

Public function, argument checks, backend choice and the ``haic_kernels::conv_compress`` custom
op. Backends are imported lazily, on first use.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import (
    check_dtype,
    check_int,
    check_same_device,
    check_tensor,
    resolve_backend,
)
from haic_kernels.ops._weight_cache import cached_layout

__all__ = ["BACKENDS", "DTYPES", "conv_compress"]

CHOICES = ("torch", "triton", "cuda")
BACKENDS = ("auto", *CHOICES)
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
    check_same_device(x=x, weight=weight, bias=bias)
    if torch.is_grad_enabled():
        for name, t in (("x", x), ("weight", weight), ("bias", bias)):
            if t is not None and t.requires_grad:
                raise RuntimeError(
                    f"{name}: requires grad, but this op has no backward; call it under "
                    "torch.no_grad() or torch.inference_mode()"
                )
    chosen = resolve_backend(
        "conv_compress", backend, x.device, choices=CHOICES, auto_order=("triton", "cuda")
    )
    return torch.ops.haic_kernels.conv_compress(x, weight, bias, g, chosen)


def _new_output(shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device):
    """Output allocation of the fast backends (tests replace it to poison the buffer)."""
    return torch.empty(shape, dtype=dtype, device=device)


@torch.library.custom_op("haic_kernels::conv_compress", mutates_args=())
def _conv_compress_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid: int, backend: str
) -> torch.Tensor:
    """The op behind `conv_compress` (arguments already checked, ``backend`` resolved)."""
    if backend == "torch":
        from haic_kernels.ops.conv_compress.reference import conv_compress_reference

        return conv_compress_reference(x, weight, bias, grid)
    out = _new_output((x.shape[0], (grid // 2) ** 2, weight.shape[0]), x.dtype, x.device)
    if backend == "triton":
        from haic_kernels.ops.conv_compress import triton as impl
    elif backend == "cuda":
        from haic_kernels.ops.conv_compress import cuda as impl  # type: ignore[no-redef]
    else:
        raise ValueError(f"backend: expected 'torch', 'triton' or 'cuda', got {backend!r}")
    # Both backends use the same [4C, C_out] layout: one cache entry serves either.
    w_kn = cached_layout(weight, "conv_compress", impl.prepare_weight)
    run = impl.conv_compress_triton if backend == "triton" else impl.conv_compress_cuda
    run(x, w_kn, bias, out, grid)
    return out


@_conv_compress_op.register_fake
def _conv_compress_fake(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid: int, backend: str
) -> torch.Tensor:
    return x.new_empty((x.shape[0], (grid // 2) ** 2, weight.shape[0]))
