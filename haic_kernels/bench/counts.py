"""FLOP and byte counts, and the ratios made from them.

Units: TFLOP/s = 1e12 FLOP/s and GB/s = 1e9 B/s (decimal, as datasheets quote bandwidth).
Bytes are the fewest that must move through device memory: each input read once, each output
written once. Measured time against these counts says how far a kernel is from its floor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

Shape = Sequence[int]


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def nbytes(shape: Shape, dtype: torch.dtype) -> int:
    """Bytes of a dense tensor of ``shape`` and ``dtype``."""
    return math.prod(int(s) for s in shape) * itemsize(dtype)


def io_bytes(
    inputs: Iterable[tuple[Shape, torch.dtype]], outputs: Iterable[tuple[Shape, torch.dtype]]
) -> int:
    """The fewest bytes to move: every input read once plus every output written once."""
    return sum(nbytes(s, d) for s, d in inputs) + sum(nbytes(s, d) for s, d in outputs)


def matmul_flops(m: int, n: int, k: int, batch: int = 1) -> int:
    """FLOPs of ``batch`` products of [m, k] x [k, n]: one multiply and one add per term."""
    return 2 * batch * m * n * k


def tflops(flops: float, ms: float) -> float:
    """Achieved TFLOP/s for ``flops`` done in ``ms`` milliseconds."""
    return flops / (ms * 1e-3) / 1e12


def gbps(nbytes_moved: float, ms: float) -> float:
    """Achieved GB/s for ``nbytes_moved`` in ``ms`` milliseconds."""
    return nbytes_moved / (ms * 1e-3) / 1e9


def fraction(achieved: float, peak: float | None) -> float | None:
    """``achieved / peak``, or None when there is no peak to compare with."""
    if peak is None or peak <= 0:
        return None
    return achieved / peak


def speedup(baseline_ms: float, ms: float) -> float:
    """How many times faster than the baseline (>1 is faster)."""
    return baseline_ms / ms


def floor_ms(flops: float, nbytes_moved: float, peak_tflops: float, peak_gbps: float) -> float:
    """The roofline floor: the larger of compute time and memory time at the given peaks."""
    return max(flops / (peak_tflops * 1e12), nbytes_moved / (peak_gbps * 1e9)) * 1e3
