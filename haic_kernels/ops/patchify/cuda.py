"""patchify through the compiled CUDA kernel (csrc/patchify.cuh via haic_kernels._C).

A thin call: tensors become integer pointers, sizes and strides; the binding checks them and
raises on CUDA errors. Imported lazily by api.py; never imports the reference.
"""

from __future__ import annotations

import torch

from haic_kernels import _ext
from haic_kernels.backends import BackendUnavailable

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def patchify_cuda(
    frames: torch.Tensor,
    out: torch.Tensor,
    patch_size: int,
    scale: tuple[float, float, float],
    shift: tuple[float, float, float],
) -> None:
    """Write patchify(frames) into ``out`` ([F, P, K_pad], contiguous) on the current stream.

    ``frames``: CUDA uint8 [F, H, W, 3] with channel stride 1 (other strides free); ``out`` on the
    same device. ``out = frames * scale[c] + shift[c]`` in fp32 (FMA), one rounding.
    """
    ext = _ext.load()
    if ext is None:
        raise BackendUnavailable(f"haic_kernels._C is unavailable: {_ext.load_error()}")
    if not out.is_contiguous():
        raise ValueError("out: expected a contiguous tensor")
    with torch.cuda.device(frames.device):
        ext.patchify_u8(
            frames_ptr=frames.data_ptr(),
            shape=tuple(frames.shape),
            strides=tuple(frames.stride()),
            out_ptr=out.data_ptr(),
            out_dtype=_DTYPE_NAMES[out.dtype],
            k_pad=out.shape[-1],
            patch_size=patch_size,
            scale=tuple(scale),
            shift=tuple(shift),
            stream=torch.cuda.current_stream(frames.device).cuda_stream,
        )
