"""patch_embed in plain PyTorch: the oracle for the Triton and CUDA backends. Runs on any device.

Exactly what the vision tower's PatchEmbedding does with stock modules: normalize the frames,
``F.conv2d`` with stride p, flatten, prepend CLS, add the learned positions. Work per call (the
fast kernels' floor): 2*F*P*K*D flops (K = 3*p*p) plus F*(1+P)*D adds; bytes = the frames
(1 byte per uint8 pixel), the weight, the positions and the output. This eager version also
writes and re-reads a float copy of the frames, the conv output and its transposed copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def normalize_reference(
    frames: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype
) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> ``dtype`` [F, 3, H, W]: ``(x/255 - mean[c]) / std[c]`` in fp32."""
    m = torch.tensor(mean, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1)
    x = frames.permute(0, 3, 1, 2).to(torch.float32) / 255.0
    return ((x - m) / s).to(dtype)


def patch_embed_reference(
    frames: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cls: torch.Tensor,
    pos: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """frames (uint8 [F,H,W,3] or float [F,3,H,W]) -> [F, 1 + P, D] in ``weight.dtype``.

    uint8 frames are normalized in fp32 and rounded to the weight's dtype; float frames are
    taken as already normalized and only cast. No validation: `haic_kernels.patch_embed` checks.
    """
    dtype = weight.dtype
    if frames.dtype == torch.uint8:
        x = normalize_reference(frames, mean, std, dtype)
    else:
        x = frames.to(dtype)
    p = weight.shape[-1]
    n_patches = (x.shape[2] // p) * (x.shape[3] // p)
    if n_patches == 0 or weight.shape[0] == 0:  # conv2d takes neither an empty image nor D = 0
        y = x.new_zeros((x.shape[0], n_patches, weight.shape[0]))
    else:
        y = F.conv2d(x, weight, bias, stride=p).flatten(2).transpose(1, 2)  # [F, P, D]
    c = cls.reshape(1, 1, -1).to(dtype).expand(y.shape[0], 1, -1)
    return (torch.cat([c, y], dim=1) + pos.to(dtype).unsqueeze(0)).contiguous()
