"""fp8_linear in plain PyTorch: the per-row quantizer and the emulated linear (the "torch" /
"emulated" backends). Dequantized operands are exact in fp32 (a 4-bit e4m3 significand times an
fp32 scale), so the emulated matmul differs from exact arithmetic on the quantized values only
by fp32 accumulation."""

from __future__ import annotations

import torch

from haic_kernels.ops.fp8_linear.format import E4M3_MAX, MIN_AMAX


def quantize_rows_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (q e4m3 [M, K], scale fp32 [M]) with ``x[m] ~ q[m] * scale[m]``::

    amax = max(max|x[m]|, MIN_AMAX);  scale = amax / 448;  q = e4m3(clamp(x * (448 / amax)))
    """
    amax = x.abs().amax(dim=-1).to(torch.float32).clamp_min(MIN_AMAX)
    # Tensor / tensor: IEEE division. A Python scalar on either side makes torch multiply by a
    # reciprocal instead (448.0 / amax is then 1 ulp off), which the kernels do not.
    e4m3_max = torch.full_like(amax, E4M3_MAX)
    q = (x.to(torch.float32) * (e4m3_max / amax)[:, None]).clamp(-E4M3_MAX, E4M3_MAX)
    return q.to(torch.float8_e4m3fn), amax / e4m3_max


def fp8_linear_emulated(
    x: torch.Tensor,
    qweight: torch.Tensor,
    wscale: torch.Tensor,
    bias: torch.Tensor | None,
    qx: torch.Tensor,
    xscale: torch.Tensor,
) -> torch.Tensor:
    """``(qx * xscale) @ (qweight * wscale)^T + bias`` in fp32, rounded to x's dtype [M, N]."""
    a = qx.to(torch.float32) * xscale[:, None]
    w = qweight.to(torch.float32) * wscale[:, None]
    y = a @ w.t()
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)
