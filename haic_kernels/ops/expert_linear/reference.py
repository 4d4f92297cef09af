"""expert_linear in plain PyTorch: the "torch" backend (a loop over experts).

Runs anywhere. Reads the group boundaries back to the host once (so, unlike the Triton path,
it cannot be captured in a CUDA graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expert_linear_reference(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor | None],
    perm: torch.Tensor,
    offsets: torch.Tensor,
) -> torch.Tensor:
    """``out[t] = F.linear(x[t], W[e], b[e])`` per expert group: index_select, F.linear,
    index_copy_. x [T, K], weights E x [N, K], perm int [T], offsets int [E + 1] -> [T, N]."""
    out = x.new_empty((x.shape[0], weights[0].shape[0]))
    bounds = offsets.tolist()
    idx = perm.long()
    for e, (w, b) in enumerate(zip(weights, biases)):
        rows = idx[bounds[e] : bounds[e + 1]]
        if rows.numel():
            out.index_copy_(0, rows, F.linear(x.index_select(0, rows), w, b))
    return out
