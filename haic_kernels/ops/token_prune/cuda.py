"""token_prune selection through the compiled CUDA kernel (csrc/token_select.cuh via
haic_kernels._C). A thin call: tensors become integer pointers; the binding checks them and
raises on CUDA errors. Imported lazily by api.py; never imports the reference.
"""

from __future__ import annotations

import torch

from haic_kernels import _ext
from haic_kernels.backends import BackendUnavailable


def segment_topk_cuda(
    scores: torch.Tensor,
    cu_seqlens: torch.Tensor,
    k: torch.Tensor,
    keep_i8: torch.Tensor,
    max_seqlen: int,
) -> None:
    """scores float32 [T], cu_seqlens int32 [G+1], k int32 [G] (CUDA, contiguous) -> writes
    keep_i8 int8 [T] inside the segments, on the current stream. ``max_seqlen`` only sizes
    the grid; segment bounds are clamped into [0, T] in the kernel."""
    ext = _ext.load()
    if ext is None:
        raise BackendUnavailable(f"haic_kernels._C is unavailable: {_ext.load_error()}")
    tensors = {"scores": scores, "cu_seqlens": cu_seqlens, "k": k, "keep": keep_i8}
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(f"{name}: expected a contiguous tensor")
    with torch.cuda.device(scores.device):
        ext.segment_topk_f32(
            scores_ptr=scores.data_ptr(),
            cu_seqlens_ptr=cu_seqlens.data_ptr(),
            k_ptr=k.data_ptr(),
            keep_ptr=keep_i8.data_ptr(),
            num_segments=k.shape[0],
            max_seqlen=max_seqlen,
            num_tokens=scores.shape[0],
            stream=torch.cuda.current_stream(scores.device).cuda_stream,
        )
