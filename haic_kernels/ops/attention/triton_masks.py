"""The masks and sequence bounds both attention passes share (`triton.py`'s forward,
`triton_scores.py`'s key scores): Triton helpers inlined into each kernel. A leaf module.
"""

from __future__ import annotations

import triton
import triton.language as tl

_LOG2E = 1.4426950408889634
# Tiles both passes use off the GPU's autotuned ones (see triton.py): <= 16 query rows take the
# smallest tile tl.dot accepts; the interpreter 32 x 32.
_DECODE_BLOCK_M = 16
_INTERP_BLOCK = 32


@triton.jit
def _seq_bounds(cu_ptr, b, seqlen, total, VARLEN: tl.constexpr):
    """(first row, length) of sequence ``b``; packed boundaries clamped into [0, total]."""
    if VARLEN:
        start = tl.minimum(tl.maximum(tl.load(cu_ptr + b), 0), total)
        length = tl.minimum(tl.maximum(tl.load(cu_ptr + b + 1), start), total) - start
    else:
        start = 0
        length = seqlen
    return start, length


@triton.jit
def _visible(rows, cols, len_k, off, ids_q, ids_ptr, CAUSAL: tl.constexpr, HAS_IDS: tl.constexpr):
    """bool [BLOCK_M, BLOCK_N]: key ``cols`` visible to query ``rows`` (in range, mask rule)."""
    vis = (cols < len_k)[None, :]
    if CAUSAL:
        c = cols[None, :] <= rows[:, None] + off  # bottom-right aligned
        if HAS_IDS:
            ids_k = tl.load(ids_ptr + cols, mask=cols < len_k, other=-2)
            c = c | ((ids_q[:, None] == ids_k[None, :]) & (ids_q[:, None] >= 0))
        vis = vis & c
    return vis
