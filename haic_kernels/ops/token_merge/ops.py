"""The ``haic_kernels::token_merge_*`` custom ops: their dispatch tables and fake kernels.

Arguments arrive checked by api.py with the backend resolved; fast backends allocate through
``_common.new_output``.
"""

from __future__ import annotations

import torch

from haic_kernels.ops._common import Dispatch, new_output

__all__ = ["MATCH", "MERGE", "PATCH_DIFF", "STEP"]

OP = "token_merge"


def _ref(name: str):
    def run(*args):
        from haic_kernels.ops.token_merge import reference

        return getattr(reference, name)(*args)

    return run


def _match_triton(metric, cu, r, max_seqlen):
    from haic_kernels.ops.token_merge.triton import bipartite_match_triton

    best = new_output(metric.shape[:1], torch.float32, metric.device)
    match = new_output(metric.shape[:1], torch.int64, metric.device)
    target = new_output(metric.shape[:1], torch.int64, metric.device)
    bipartite_match_triton(metric, cu, r, max_seqlen, best, match, target)
    return target


def _match_torch(metric, cu, r, max_seqlen):
    return _ref("bipartite_match_reference")(metric, cu, r)


MATCH = Dispatch(OP, {"torch": _match_torch, "triton": _match_triton}, auto_order=("triton",))


@torch.library.custom_op("haic_kernels::token_merge_match", mutates_args=())
def match_op(
    metric: torch.Tensor, cu: torch.Tensor, r: torch.Tensor, max_seqlen: int, backend: str
) -> torch.Tensor:
    return MATCH.run(backend, metric, cu, r, max_seqlen)


@match_op.register_fake
def _(metric, cu, r, max_seqlen, backend):
    return metric.new_empty(metric.shape[:1], dtype=torch.int64)


def _merge_triton(x, sizes, target, kept):
    from haic_kernels.ops.token_merge.triton import merge_packed_triton

    return merge_packed_triton(x, sizes, target, kept, new_output)


def _merge_torch(x, sizes, target, kept):
    return _ref("merge_packed_reference")(x, sizes, target)


MERGE = Dispatch(OP, {"torch": _merge_torch, "triton": _merge_triton}, auto_order=("triton",))


@torch.library.custom_op("haic_kernels::token_merge_merge", mutates_args=())
def merge_op(
    x: torch.Tensor, sizes: torch.Tensor, target: torch.Tensor, kept: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return MERGE.run(backend, x, sizes, target, kept)


@merge_op.register_fake
def _(x, sizes, target, kept, backend):
    return (x.new_empty((kept, x.shape[1])), x.new_empty((kept,), dtype=torch.float32),
            x.new_empty(x.shape[:1], dtype=torch.int64))  # fmt: skip


def _step_triton(h, keys, sizes, cu, cu_new, r, rows, max_seqlen, kept, longest_new):
    from haic_kernels.ops.token_merge.triton import merge_step_triton

    return merge_step_triton(h, keys, sizes, cu, cu_new, r, rows, max_seqlen, kept,
                             longest_new, new_output)  # fmt: skip


def _step_torch(h, keys, sizes, cu, cu_new, r, rows, max_seqlen, kept, longest_new):
    return _ref("merge_step_reference")(h, keys, sizes, cu, r, rows)


STEP = Dispatch(OP, {"torch": _step_torch, "triton": _step_triton}, auto_order=("triton",))


@torch.library.custom_op("haic_kernels::token_merge_step", mutates_args=())
def step_op(
    h: torch.Tensor, keys: torch.Tensor, sizes: torch.Tensor | None, cu: torch.Tensor,
    cu_new: torch.Tensor, r: torch.Tensor, rows: torch.Tensor, max_seqlen: int, kept: int,
    longest_new: int, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    return STEP.run(backend, h, keys, sizes, cu, cu_new, r, rows, max_seqlen, kept,
                    longest_new)  # fmt: skip


@step_op.register_fake
def _(h, keys, sizes, cu, cu_new, r, rows, max_seqlen, kept, longest_new, backend):
    return (h.new_empty((kept, h.shape[1])), h.new_empty((kept,), dtype=torch.float32),
            rows.new_empty(rows.shape))  # fmt: skip


PATCH_DIFF = Dispatch(OP, {"torch": _ref("patch_difference_reference")})


@torch.library.custom_op("haic_kernels::token_merge_patch_difference", mutates_args=())
def patch_difference_op(
    frames: torch.Tensor, prev: torch.Tensor, patch: int, backend: str
) -> torch.Tensor:
    return PATCH_DIFF.run(backend, frames, prev, patch)


@patch_difference_op.register_fake
def _(frames, prev, patch, backend):
    g = frames.shape[1] // patch
    return frames.new_empty((frames.shape[0], g * g), dtype=torch.int32)
