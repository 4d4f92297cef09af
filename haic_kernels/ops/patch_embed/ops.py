"""The ``haic_kernels::patch_embed`` custom op: its dispatch table and fake kernel.

Arguments arrive checked by api.py (cls ``[D]`` and pos ``[1+P, D]`` contiguous), with the
backend resolved. The fast backends share one output allocation (``_common.new_output``) and
read the weight re-laid-out once per tensor and version (``_weight_cache``).
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import Dispatch, new_output
from haic_kernels.ops._weight_cache import cached_layout
from haic_kernels.ops.patchify.ops import scale_shift

__all__ = ["DISPATCH", "patch_embed_op"]


def _out_shape(frames: torch.Tensor, weight: torch.Tensor) -> tuple[int, int, int]:
    p = weight.shape[-1]
    h, w = frames.shape[1:3] if frames.dtype == torch.uint8 else frames.shape[2:4]
    return frames.shape[0], 1 + (h // p) * (w // p), weight.shape[0]


def _torch(frames, weight, bias, cls, pos, mean, std):
    from haic_kernels.ops.patch_embed.reference import patch_embed_reference

    return patch_embed_reference(frames, weight, bias, cls, pos, mean, std)


def _fast(impl, run, name: str, frames, weight, bias, cls, pos, mean, std):
    out = new_output(_out_shape(frames, weight), weight.dtype, frames.device)
    w_kd = cached_layout(weight, ("patch_embed", name), impl.prepare_weight)
    run(frames, w_kd, bias, cls, pos, out, weight.shape[-1], *scale_shift(mean, std))
    return out


def _triton(*args):
    from haic_kernels.ops.patch_embed import triton as impl

    return _fast(impl, impl.patch_embed_triton, "triton", *args)


def _cuda(*args):
    from haic_kernels.ops.patch_embed import cuda as impl

    return _fast(impl, impl.patch_embed_cuda, "cuda", *args)


DISPATCH = Dispatch(
    "patch_embed",
    {"torch": _torch, "triton": _triton, "cuda": _cuda},
    auto_order=("triton", "cuda"),
)


@torch.library.custom_op("haic_kernels::patch_embed", mutates_args=())
def patch_embed_op(
    frames: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    cls: torch.Tensor,
    pos: torch.Tensor,
    mean: list[float],
    std: list[float],
    backend: str,
) -> torch.Tensor:
    """The op behind `patch_embed` (arguments checked, ``backend`` resolved)."""
    return DISPATCH.run(backend, frames, weight, bias, cls, pos, mean, std)


@patch_embed_op.register_fake
def _patch_embed_fake(frames, weight, bias, cls, pos, mean, std, backend):
    return frames.new_empty(_out_shape(frames, weight), dtype=weight.dtype)
