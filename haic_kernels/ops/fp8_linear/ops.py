"""The ``haic_kernels::quantize_rows`` and ``haic_kernels::fp8_linear`` custom ops: their
dispatch tables and fake kernels.

Arguments arrive checked by api.py, with the backends resolved. The Triton quantizer allocates
its outputs through ``_common.new_output``.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import Dispatch, new_output

__all__ = ["LINEAR", "QUANTIZE", "fp8_linear_op", "quantize_rows_op"]


def _quantize_torch(x):
    from haic_kernels.ops.fp8_linear.reference import quantize_rows_reference

    return quantize_rows_reference(x)


def _quantize_triton(x):
    from haic_kernels.ops.fp8_linear.triton import quantize_rows_triton

    q = new_output(tuple(x.shape), torch.float8_e4m3fn, x.device)
    scale = new_output((x.shape[0],), torch.float32, x.device)
    quantize_rows_triton(x if x.stride(-1) == 1 else x.contiguous(), q, scale)
    return q, scale


def _linear_emulated(x, qweight, wscale, bias, qx, xscale):
    from haic_kernels.ops.fp8_linear.reference import fp8_linear_emulated

    return fp8_linear_emulated(x, qweight, wscale, bias, qx, xscale)


def _linear_scaled_mm(x, qweight, wscale, bias, qx, xscale):
    from haic_kernels.ops.fp8_linear.scaled_mm import fp8_linear_scaled_mm

    return fp8_linear_scaled_mm(qweight, wscale, bias, qx, xscale).to(x.dtype)


QUANTIZE = Dispatch("quantize_rows", {"torch": _quantize_torch, "triton": _quantize_triton},
                    auto_order=("triton",))  # fmt: skip
LINEAR = Dispatch("fp8_linear", {"emulated": _linear_emulated, "scaled_mm": _linear_scaled_mm},
                  auto_order=("scaled_mm",), fallback="emulated")  # fmt: skip


@torch.library.custom_op("haic_kernels::quantize_rows", mutates_args=())
def quantize_rows_op(x: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The op behind `quantize_rows`: x [M, K] -> (e4m3 [M, K], fp32 [M])."""
    return QUANTIZE.run(backend, x)


@quantize_rows_op.register_fake
def _quantize_rows_fake(x, backend):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(
        x.shape[0], dtype=torch.float32
    )


@torch.library.custom_op("haic_kernels::fp8_linear", mutates_args=())
def fp8_linear_op(
    x: torch.Tensor,
    qweight: torch.Tensor,
    wscale: torch.Tensor,
    bias: torch.Tensor | None,
    qx: torch.Tensor,
    xscale: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    """The op behind `fp8_linear` (x [M, K] only for its dtype; qx, xscale its quantization)."""
    return LINEAR.run(backend, x, qweight, wscale, bias, qx, xscale)


@fp8_linear_op.register_fake
def _fp8_linear_fake(x, qweight, wscale, bias, qx, xscale, backend):
    return x.new_empty((x.shape[0], qweight.shape[0]))
