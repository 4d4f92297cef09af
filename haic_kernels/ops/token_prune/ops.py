"""The ``haic_kernels::token_prune_*`` custom ops: their dispatch tables and fake kernels.

Arguments arrive checked by api.py (contiguous where a kernel reads a raw pointer), with the
backend resolved. The fast backends allocate through ``_common.new_output``.
"""

from __future__ import annotations

import math

import torch

from haic_kernels.ops._common import Dispatch, new_output

__all__ = ["COSINE", "GATHER", "MERGE", "NEAREST", "SELECT"]

OP = "token_prune"


def _ref(name: str):
    """The reference implementation ``name`` (imported on first use)."""

    def run(*args):
        from haic_kernels.ops.token_prune import reference

        return getattr(reference, name)(*args)

    return run


# ---- frame cosine scores -------------------------------------------------------------------------


def _cosine_triton(x, prev, first):
    from haic_kernels.ops.token_prune.triton import frame_cosine_scores_triton

    out = new_output(x.shape[:2], torch.float32, x.device)
    frame_cosine_scores_triton(x, prev, out, first)
    return out


COSINE = Dispatch(
    OP,
    {"torch": _ref("frame_cosine_scores_reference"), "triton": _cosine_triton},
    auto_order=("triton",),
)


@torch.library.custom_op("haic_kernels::token_prune_frame_cosine", mutates_args=())
def frame_cosine_op(
    x: torch.Tensor, prev: torch.Tensor, first: float, backend: str
) -> torch.Tensor:
    return COSINE.run(backend, x, prev, first)


@frame_cosine_op.register_fake
def _(x, prev, first, backend):
    return x.new_empty(x.shape[:2], dtype=torch.float32)


# ---- nearest kept token ------------------------------------------------------------------------


def _nearest_triton(x, keep):
    from haic_kernels.ops.token_prune.triton import nearest_kept_triton

    out = new_output(x.shape[:2], torch.int32, x.device)
    nearest_kept_triton(x, keep.to(torch.int8).contiguous(), out)
    return out


NEAREST = Dispatch(
    OP, {"torch": _ref("nearest_kept_reference"), "triton": _nearest_triton}, auto_order=("triton",)
)


@torch.library.custom_op("haic_kernels::token_prune_nearest_kept", mutates_args=())
def nearest_kept_op(x: torch.Tensor, keep: torch.Tensor, backend: str) -> torch.Tensor:
    return NEAREST.run(backend, x, keep)


@nearest_kept_op.register_fake
def _(x, keep, backend):
    return x.new_empty(x.shape[:2], dtype=torch.int32)


# ---- segment top-k -----------------------------------------------------------------------------


def _select_fast(launcher: str):
    def run(scores, cu, k, max_seqlen):
        keep = new_output(scores.shape, torch.int8, scores.device)
        keep.zero_()  # positions outside every segment stay dropped
        if launcher == "cuda":
            from haic_kernels.ops.token_prune.cuda import segment_topk_cuda as launch
        else:
            from haic_kernels.ops.token_prune.triton import segment_topk_triton as launch
        launch(scores, cu, k, keep, max_seqlen)
        return keep.to(torch.bool)

    return run


def _select_torch(scores, cu, k, max_seqlen):
    from haic_kernels.ops.token_prune.reference import segment_topk_reference

    return segment_topk_reference(scores, cu, k)


SELECT = Dispatch(
    OP,
    {"torch": _select_torch, "triton": _select_fast("triton"), "cuda": _select_fast("cuda")},
    auto_order=("cuda", "triton"),
)


@torch.library.custom_op("haic_kernels::token_prune_segment_topk", mutates_args=())
def segment_topk_op(
    scores: torch.Tensor, cu: torch.Tensor, k: torch.Tensor, max_seqlen: int, backend: str
) -> torch.Tensor:
    return SELECT.run(backend, scores, cu, k, max_seqlen)


@segment_topk_op.register_fake
def _(scores, cu, k, max_seqlen, backend):
    return scores.new_empty(scores.shape, dtype=torch.bool)


# ---- row gather --------------------------------------------------------------------------------


def _gather_triton(x, index):
    from haic_kernels.ops.token_prune.triton import gather_rows_triton

    out = new_output((index.shape[0], *x.shape[1:]), x.dtype, x.device)
    width = math.prod(x.shape[1:])
    nbytes = width * x.element_size()
    if x.shape[0] == 0 or index.shape[0] == 0 or nbytes == 0:
        return out
    # Canonical strides: a contiguous tensor may carry any stride on a size-1 dim, which
    # view(dtype) refuses.
    flat = x.as_strided((x.shape[0], width), (width, 1))
    oflat = out.as_strided((out.shape[0], width), (width, 1))
    # Rows as raw words: one kernel for every dtype (bool, ints, floats); 4-byte words when the
    # row allows, bytes otherwise.
    word = torch.int32 if nbytes % 4 == 0 else torch.uint8
    gather_rows_triton(flat.view(torch.uint8).view(word), index, oflat.view(torch.uint8).view(word))
    return out


GATHER = Dispatch(
    OP, {"torch": _ref("gather_rows_reference"), "triton": _gather_triton}, auto_order=("triton",)
)


@torch.library.custom_op("haic_kernels::token_prune_gather_rows", mutates_args=())
def gather_rows_op(x: torch.Tensor, index: torch.Tensor, backend: str) -> torch.Tensor:
    return GATHER.run(backend, x, index)


@gather_rows_op.register_fake
def _(x, index, backend):
    return x.new_empty((index.shape[0], *x.shape[1:]))


# ---- size-weighted merge -----------------------------------------------------------------------


def _merge_triton(x, target, sizes):
    if x.shape[2] == 0:  # no features: only the sizes to sum, and no column tile to launch
        return _ref("merge_weighted_reference")(x, target, sizes)
    from haic_kernels.ops.token_prune.triton import merge_weighted_triton

    out = new_output(x.shape, x.dtype, x.device)
    new_sizes = new_output(x.shape[:2], torch.float32, x.device)
    merge_weighted_triton(x, target, sizes, out, new_sizes)
    return out, new_sizes


MERGE = Dispatch(
    OP, {"torch": _ref("merge_weighted_reference"), "triton": _merge_triton}, auto_order=("triton",)
)


@torch.library.custom_op("haic_kernels::token_prune_merge", mutates_args=())
def merge_op(
    x: torch.Tensor, target: torch.Tensor, sizes: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    return MERGE.run(backend, x, target, sizes)


@merge_op.register_fake
def _(x, target, sizes, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape[:2], dtype=torch.float32)
