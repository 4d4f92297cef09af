"""fp8_linear through ``torch._scaled_mm`` with row-wise scales (cuBLASLt / CUTLASS on sm_89+).

Schema on torch 2.4 through 2.13: ``_scaled_mm(self, mat2, scale_a, scale_b, bias=None,
scale_result=None, out_dtype=None, use_fast_accum=False)``; row-wise scaling wants scale_a
``[M, 1]`` and scale_b ``[1, N]`` fp32 contiguous, mat2 column-major (the ``[N, K]`` weight's
``.t()``), K and N multiples of 16 and a bfloat16 output (and bias). Imported lazily by api.py.
"""

from __future__ import annotations

import torch


def problem(x: torch.Tensor, qweight: torch.Tensor) -> str | None:
    """Why ``_scaled_mm`` cannot run this call, or None."""
    if x.device.type != "cuda":
        return f"needs CUDA tensors, got tensors on {x.device}"
    cap = torch.cuda.get_device_capability(x.device)
    if cap < (8, 9):
        return f"needs sm_89 or newer (fp8 tensor cores), this device is sm_{cap[0]}{cap[1]}"
    if x.dtype != torch.bfloat16:
        return f"row-wise scaled_mm writes bfloat16; x is {x.dtype}"
    n, k = qweight.shape
    if k % 16 or n % 16:
        return f"needs K and N multiples of 16, got K={k}, N={n}"
    return None


def fp8_linear_scaled_mm(
    qweight: torch.Tensor,
    wscale: torch.Tensor,
    bias: torch.Tensor | None,
    qx: torch.Tensor,
    xscale: torch.Tensor,
) -> torch.Tensor:
    """``(qx * xscale) @ (qweight * wscale)^T + bias`` [M, N] bf16, fp32 accumulation."""
    return torch._scaled_mm(
        qx,
        qweight.t(),
        scale_a=xscale[:, None],
        scale_b=wscale[None, :],
        bias=bias.to(torch.bfloat16) if bias is not None else None,
        out_dtype=torch.bfloat16,
        use_fast_accum=False,
    )
