"""The ``haic_kernels::conv_compress`` custom op: its dispatch table and fake kernel.

Arguments arrive checked by api.py, with the backend resolved. Both fast backends read the
weight as one cached ``[4C, C_out]`` layout (``_weight_cache``; one entry serves either) and
allocate their output through ``_common.new_output``.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import Dispatch, new_output
from haic_kernels.ops._weight_cache import cached_layout

__all__ = ["DISPATCH", "conv_compress_op"]


def _out_shape(x: torch.Tensor, weight: torch.Tensor, grid: int) -> tuple[int, int, int]:
    return x.shape[0], (grid // 2) ** 2, weight.shape[0]


def _torch(x, weight, bias, grid):
    from haic_kernels.ops.conv_compress.reference import conv_compress_reference

    return conv_compress_reference(x, weight, bias, grid)


def _fast(impl, run, x, weight, bias, grid):
    out = new_output(_out_shape(x, weight, grid), x.dtype, x.device)
    run(x, cached_layout(weight, "conv_compress", impl.prepare_weight), bias, out, grid)
    return out


def _triton(*args):
    from haic_kernels.ops.conv_compress import triton as impl

    return _fast(impl, impl.conv_compress_triton, *args)


def _cuda(*args):
    from haic_kernels.ops.conv_compress import cuda as impl

    return _fast(impl, impl.conv_compress_cuda, *args)


DISPATCH = Dispatch(
    "conv_compress",
    {"torch": _torch, "triton": _triton, "cuda": _cuda},
    auto_order=("triton", "cuda"),
)


@torch.library.custom_op("haic_kernels::conv_compress", mutates_args=())
def conv_compress_op(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid: int, backend: str
) -> torch.Tensor:
    """The op behind `conv_compress` (arguments already checked, ``backend`` resolved)."""
    return DISPATCH.run(backend, x, weight, bias, grid)


@conv_compress_op.register_fake
def _conv_compress_fake(x, weight, bias, grid, backend):
    return x.new_empty(_out_shape(x, weight, grid))
