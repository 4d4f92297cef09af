"""The ``haic_kernels::patchify`` custom op: its dispatch table and fake kernel.

Arguments arrive checked by api.py, with the backend resolved. Backends are imported on first
use; the fast ones allocate their output through ``_common.new_output``.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import Dispatch, new_output

__all__ = ["DISPATCH", "patchify_op", "scale_shift"]


def _out_shape(frames: torch.Tensor, patch_size: int, k_pad: int) -> tuple[int, int, int]:
    n, h, w, _ = frames.shape
    return n, (h // patch_size) * (w // patch_size), k_pad


def scale_shift(mean: list[float], std: list[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(x/255 - mean)/std == x * scale + shift``: one FMA per element in the kernels."""
    return tuple(1.0 / (255.0 * s) for s in std), tuple(-m / s for m, s in zip(mean, std))


def _torch(frames, patch_size, mean, std, dtype, k_pad):
    from haic_kernels.ops.patchify.reference import patchify_reference

    return patchify_reference(frames, patch_size, mean, std, dtype, k_pad)


def _triton(frames, patch_size, mean, std, dtype, k_pad):
    from haic_kernels.ops.patchify.triton import patchify_triton

    out = new_output(_out_shape(frames, patch_size, k_pad), dtype, frames.device)
    patchify_triton(frames, out, patch_size, *scale_shift(mean, std))
    return out


def _cuda(frames, patch_size, mean, std, dtype, k_pad):
    from haic_kernels.ops.patchify.cuda import patchify_cuda

    out = new_output(_out_shape(frames, patch_size, k_pad), dtype, frames.device)
    patchify_cuda(frames, out, patch_size, *scale_shift(mean, std))
    return out


DISPATCH = Dispatch(
    "patchify",
    {"torch": _torch, "triton": _triton, "cuda": _cuda},
    auto_order=("cuda", "triton"),
)


@torch.library.custom_op("haic_kernels::patchify", mutates_args=())
def patchify_op(
    frames: torch.Tensor,
    patch_size: int,
    mean: list[float],
    std: list[float],
    dtype: torch.dtype,
    k_pad: int,
    backend: str,
) -> torch.Tensor:
    """The op behind `patchify` (arguments already checked, ``backend`` already resolved)."""
    return DISPATCH.run(backend, frames, patch_size, mean, std, dtype, k_pad)


@patchify_op.register_fake
def _patchify_fake(frames, patch_size, mean, std, dtype, k_pad, backend):
    return frames.new_empty(_out_shape(frames, patch_size, k_pad), dtype=dtype)
