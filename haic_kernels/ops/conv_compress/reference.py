"""conv_compress in plain PyTorch: the oracle for the Triton and CUDA backends. Runs anywhere.

What the adapter does with a stock nn.Conv2d: drop CLS, lay the g*g tokens out as a
[F, C, g, g] image, 2x2 conv with stride 2, flatten back to tokens. Work per call: 2*M*N*K flops
with M = F*(g/2)^2, N = C_out, K = 4*C; bytes = x + weight + out (the fast kernels read each
input token once). This eager version also writes and re-reads the permuted image and the
transposed conv output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def conv_compress_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, grid: int
) -> torch.Tensor:
    """x [F, 1 + g*g, C] (CLS first) or [F, g*g, C] -> [F, (g/2)^2, C_out] in x's dtype.

    No validation: `haic_kernels.conv_compress` checks the arguments.
    """
    n, tokens, c = x.shape
    g = grid
    if n * c * weight.shape[0] == 0:  # conv2d takes no empty channel dims: the sum is empty
        out = x.new_zeros((n, (g // 2) ** 2, weight.shape[0]))
        return out + bias if bias is not None else out
    img = x[:, tokens - g * g :].reshape(n, g, g, c).permute(0, 3, 1, 2)  # [F, C, g, g]
    y = F.conv2d(img, weight, bias, stride=2)  # [F, C_out, g/2, g/2]
    return y.flatten(2).transpose(1, 2).contiguous()
