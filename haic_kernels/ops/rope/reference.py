"""rope in plain PyTorch: the "torch" backend, written like the model's RotaryEmbedding.

Angles ``pos * inv_freq`` in fp32 (``release``: the position and the angle rounded to the tensor's
dtype first, as the CogVLM2 release computes them), cos/sin rounded to the tensor's dtype (as the
model's rotary module returns them), rotation in fp32, one rounding back.
"""

from __future__ import annotations

import torch


def rope_reference(
    x: torch.Tensor,
    position_ids: torch.Tensor,
    inv_freq: torch.Tensor,
    heads: list[int],
    rotate: list[bool],
    interleaved: bool,
    release: bool = False,
) -> list[torch.Tensor]:
    """x [T, sum(heads) * D], position_ids [T], inv_freq fp32 [D/2] -> one [T, h, D] per group.

    Group g is heads ``sum(heads[:g]) ..`` of x, rotated when ``rotate[g]``, else copied.
    """
    t = x.shape[0]
    d = 2 * inv_freq.shape[0]
    if release:
        # in x's dtype; cos/sin below then run on the x-dtype tensor, as the release's do
        angles = position_ids.to(x.dtype).unsqueeze(-1) * inv_freq.to(x.dtype)
    else:
        angles = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq  # [T, D/2]
    if interleaved:
        angles = angles.repeat_interleave(2, dim=-1)
    else:
        angles = torch.cat([angles, angles], dim=-1)
    cos = angles.cos().to(x.dtype).to(torch.float32).unsqueeze(1)  # [T, 1, D]
    sin = angles.sin().to(x.dtype).to(torch.float32).unsqueeze(1)
    outs = []
    col = 0
    for h, rot in zip(heads, rotate):
        part = x[:, col : col + h * d].reshape(t, h, d)
        col += h * d
        if not rot:
            outs.append(part.clone(memory_format=torch.contiguous_format))
            continue
        xf = part.to(torch.float32)
        if interleaved:
            rotated = torch.stack([-xf[..., 1::2], xf[..., 0::2]], dim=-1).flatten(-2)
        else:
            rotated = torch.cat([-xf[..., d // 2 :], xf[..., : d // 2]], dim=-1)
        outs.append((xf * cos + rotated * sin).to(x.dtype))
    return outs
