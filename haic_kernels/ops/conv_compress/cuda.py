"""conv_compress through the compiled 2x2 gather (haic_kernels._C) and a library GEMM.

csrc/gather2x2.cu copies each output position's four C-wide input rows, in (kh, kw, c) order,
into one [F*(g/2)^2, 4C] buffer with 16-byte vector copies; cuBLAS (torch.addmm, bias fused)
multiplies it by the cached [4C, C_out] weight. For users without Triton. Imported lazily by
api.py; never imports the reference.
"""

from __future__ import annotations

import torch

from haic_kernels import _ext
from haic_kernels.backends import BackendUnavailable


def prepare_weight(weight: torch.Tensor) -> torch.Tensor:
    """[C_out, C, 2, 2] -> contiguous [4C, C_out], row (kh*2 + kw)*C + c."""
    c_out = weight.shape[0]
    return weight.permute(2, 3, 1, 0).reshape(4 * weight.shape[1], c_out).contiguous()


def gather2x2_cuda(x: torch.Tensor, rows: torch.Tensor, grid: int) -> None:
    """rows[(f, i, j), (kh*2 + kw)*C + c] = x[f, T - g*g + (2i + kh)*g + 2j + kw, c].

    ``x``: CUDA [F, T, C] (any strides, elements); ``rows``: contiguous [F*(g/2)^2, 4C] of x's
    dtype on the same device. Enqueued on the current stream.
    """
    ext = _ext.load()
    if ext is None:
        raise BackendUnavailable(f"haic_kernels._C is unavailable: {_ext.load_error()}")
    if not rows.is_contiguous() or rows.dtype != x.dtype:
        raise ValueError("rows: expected a contiguous tensor of x's dtype")
    with torch.cuda.device(x.device):
        ext.gather2x2(
            x_ptr=x.data_ptr(),
            shape=tuple(x.shape),
            strides=tuple(x.stride()),
            elem_size=x.element_size(),
            grid=grid,
            out_ptr=rows.data_ptr(),
            stream=torch.cuda.current_stream(x.device).cuda_stream,
        )


def conv_compress_cuda(
    x: torch.Tensor,
    w_kn: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    grid: int,
) -> None:
    """Write conv_compress(x) into ``out`` ([F, (g/2)^2, C_out] contiguous) on the current stream.

    ``w_kn`` from `prepare_weight`; the caller validates everything.
    """
    n, _, c = x.shape
    m = n * (grid // 2) ** 2
    if m == 0 or out.shape[-1] == 0:
        return
    rows = torch.empty((m, 4 * c), dtype=x.dtype, device=x.device)
    gather2x2_cuda(x, rows, grid)
    out2d = out.view(m, -1)
    if bias is not None:
        torch.addmm(bias, rows, w_kn, out=out2d)
    else:
        torch.mm(rows, w_kn, out=out2d)
