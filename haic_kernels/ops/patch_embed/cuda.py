"""patch_embed through the compiled patchify kernel (haic_kernels._C) and a library GEMM.

The memory-bound part runs in csrc/patchify.cu: uint8 frames -> normalized patch rows
[F*P, K_pad] (K_pad = 592: rows 16-byte aligned in bf16); cuBLAS (torch.addmm) multiplies them by
the cached [K_pad, D] weight with the bias fused; positions and the CLS rows are added by one
elementwise pass into the output. For users without Triton. Imported lazily by api.py; never
imports the reference.
"""

from __future__ import annotations

import torch

from haic_kernels.ops.patch_embed.layout import weight_kd
from haic_kernels.ops.patchify.cuda import patchify_cuda

# 588 -> 592: 16-byte rows for 2-byte dtypes, the alignment cuBLAS wants for its fast kernels.
K_MULTIPLE = 8


def prepare_weight(weight: torch.Tensor) -> torch.Tensor:
    """[D, 3, p, p] -> contiguous [K_pad, D], K padded to a multiple of K_MULTIPLE."""
    return weight_kd(weight, K_MULTIPLE)


def patch_embed_cuda(
    frames: torch.Tensor,
    w_kd: torch.Tensor,
    bias: torch.Tensor | None,
    cls: torch.Tensor,
    pos: torch.Tensor,
    out: torch.Tensor,
    patch_size: int,
    scale: tuple[float, float, float],
    shift: tuple[float, float, float],
) -> None:
    """Write patch_embed(frames) into ``out`` ([F, 1 + P, D] contiguous) on the current stream.

    ``frames``: CUDA uint8 [F, H, W, 3] (channel stride 1), normalized by the compiled kernel, or
    float [F, 3, H, W] (already normalized), laid out as patch rows by a torch copy;
    ``w_kd`` from `prepare_weight`.
    """
    p = patch_size
    n = frames.shape[0]
    h, w = (frames.shape[1], frames.shape[2]) if frames.dtype == torch.uint8 else frames.shape[2:]
    n_patches = (h // p) * (w // p)
    d = w_kd.shape[1]
    out[:, 0] = (cls.float() + pos[0].float()).to(out.dtype)
    if n * n_patches == 0 or d == 0:
        return
    k_pad = w_kd.shape[0]
    if frames.dtype == torch.uint8:
        rows = torch.empty((n, n_patches, k_pad), dtype=w_kd.dtype, device=frames.device)
        patchify_cuda(frames, rows, p, scale, shift)
    else:  # already-normalized float frames: the same patch rows by a torch copy
        x = frames.to(w_kd.dtype).reshape(n, 3, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        rows = torch.nn.functional.pad(x.reshape(n, n_patches, 3 * p * p), (0, k_pad - 3 * p * p))
    rows2d = rows.view(n * n_patches, -1)
    y = torch.addmm(bias, rows2d, w_kd) if bias is not None else torch.mm(rows2d, w_kd)
    torch.add(y.view(n, n_patches, d), pos[1:], out=out[:, 1:])
