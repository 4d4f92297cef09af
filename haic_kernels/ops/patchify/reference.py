"""patchify in plain PyTorch: the oracle for the Triton and CUDA backends. Runs on any device.

Bytes moved (the op is memory-bound): F*H*W*3 uint8 read, F*P*K_pad*sizeof(dtype) written, with
P = (H/p)*(W/p) and K = 3*p*p: 4x the input in fp32, 2x in bf16. This eager version also
writes and re-reads a float copy of the frames and a permuted copy; the fast kernels do not.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def patchify_reference(
    frames: torch.Tensor,
    patch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype,
    k_pad: int,
) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> [F, (H/p)*(W/p), k_pad] of ``dtype``, columns in (c, kh, kw) order.

    ``(x / 255 - mean[c]) / std[c]`` in fp32, rounded once to ``dtype``; columns >= 3*p*p are 0.
    No validation: `haic_kernels.patchify` checks the arguments.
    """
    n, h, w, _ = frames.shape
    p = patch_size
    mean_t = torch.tensor(mean, dtype=torch.float32, device=frames.device)
    std_t = torch.tensor(std, dtype=torch.float32, device=frames.device)
    x = (frames.to(torch.float32) / 255.0 - mean_t) / std_t  # [F, H, W, 3]
    x = x.reshape(n, h // p, p, w // p, p, 3)  # [F, ph, kh, pw, kw, c]
    x = x.permute(0, 1, 3, 5, 2, 4)  # [F, ph, pw, c, kh, kw]
    x = x.reshape(n, (h // p) * (w // p), 3 * p * p).to(dtype)
    if k_pad > x.shape[-1]:
        x = F.pad(x, (0, k_pad - x.shape[-1]))
    return x.contiguous()
