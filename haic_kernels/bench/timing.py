"""One timing function for every benchmark: `measure`.

On CUDA it reads device time from CUDA events recorded on the current stream around each call
(or around each replay of a CUDA graph holding several calls, for launch-bound cases), after a
warm-up, rotating among enough fresh input sets that their total is at least twice the L2 size:
a set is never timed while it is still in the cache from its last use. On the CPU it reads wall
time (`time.perf_counter`). Every result says which clock made it: ``"cuda_events"`` or
``"cpu_wall"``; the two are not comparable.

It deliberately uses no `triton.testing` helper (their arguments and return values changed
between Triton releases; ours must work from Triton 3.6 on) and no pytest-benchmark internals.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

CLOCK_CUDA = "cuda_events"
CLOCK_CPU = "cpu_wall"

# Input sets together hold at least this many times the L2 size, so that by the time a set comes
# round again the L2 has been overwritten by the others (LRU-ish, ~1x is not enough in practice).
L2_MULTIPLE = 2
# Rotation stops here even when one set is tiny: 64 sets already make any cache reuse negligible.
MAX_SETS = 64
# The input sets may take at most this fraction of the free device memory.
MEMORY_FRACTION = 0.25
# A CUDA-graph replay holds at least this many calls, so a replay is long enough to time well.
MIN_CALLS_PER_REPLAY = 8

Inputs = tuple[Any, ...]


@dataclass(frozen=True)
class Timing:
    """Statistics over ``n`` timed samples, in milliseconds per call."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    min_ms: float
    max_ms: float
    n: int
    clock: str  # CLOCK_CUDA or CLOCK_CPU
    input_sets: int = 1
    cuda_graph: bool = False
    samples_ms: tuple[float, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_samples(
        cls,
        samples_ms: Sequence[float],
        clock: str,
        *,
        input_sets: int = 1,
        cuda_graph: bool = False,
    ) -> Timing:
        if not samples_ms:
            raise ValueError("samples_ms: expected at least one sample, got none")
        s = sorted(float(x) for x in samples_ms)
        return cls(
            median_ms=percentile(s, 50),
            p20_ms=percentile(s, 20),
            p80_ms=percentile(s, 80),
            min_ms=s[0],
            max_ms=s[-1],
            n=len(s),
            clock=clock,
            input_sets=input_sets,
            cuda_graph=cuda_graph,
            samples_ms=tuple(samples_ms),
        )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default method) of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"q: expected 0 <= q <= 100, got {q}")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def tensor_nbytes(obj: Any) -> int:
    """Bytes held by all tensors in a (nested) tuple/list/dict of arguments."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(tensor_nbytes(x) for x in obj)
    if isinstance(obj, dict):
        return sum(tensor_nbytes(x) for x in obj.values())
    return 0


def l2_cache_bytes(device: torch.device | str) -> int:
    """The L2 size of a CUDA device (from its properties); 0 for anything else."""
    device = torch.device(device)
    if device.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(device)
    # `L2_cache_size` is the attribute name in torch 2.x; absent in very old builds.
    return int(getattr(props, "L2_cache_size", 0) or 0)


def sets_needed(
    set_bytes: int,
    l2_bytes: int,
    *,
    budget_bytes: int | None = None,
    min_sets: int = 1,
    max_sets: int = MAX_SETS,
) -> int:
    """How many input sets to rotate so their total is at least `L2_MULTIPLE` x the L2.

    At least ``min_sets``, at most ``max_sets``, and no more than ``budget_bytes`` allow (but
    always at least one set).
    """
    if set_bytes <= 0 or l2_bytes <= 0:
        k = min_sets
    else:
        k = max(min_sets, math.ceil(L2_MULTIPLE * l2_bytes / set_bytes))
    k = min(k, max_sets)
    if budget_bytes is not None and set_bytes > 0:
        k = min(k, budget_bytes // set_bytes)
    return max(1, k)


def make_input_sets(
    make_inputs: Callable[[torch.device], Inputs],
    device: torch.device | str,
    *,
    sets: int | None = None,
    l2_bytes: int | None = None,
    max_sets: int = MAX_SETS,
) -> list[Inputs]:
    """Fresh input sets from ``make_inputs(device)``: ``sets`` of them, or on CUDA enough to
    exceed the L2 (`sets_needed`), or one on the CPU."""
    device = torch.device(device)
    first = _as_tuple(make_inputs(device))
    if sets is None:
        if device.type == "cuda":
            if l2_bytes is None:
                l2_bytes = l2_cache_bytes(device)
            free, _ = torch.cuda.mem_get_info(device)
            sets = sets_needed(
                tensor_nbytes(first),
                l2_bytes,
                budget_bytes=int(free * MEMORY_FRACTION),
                min_sets=2,
                max_sets=max_sets,
            )
        else:
            sets = 1
    if sets < 1:
        raise ValueError(f"sets: expected >= 1, got {sets}")
    return [first] + [_as_tuple(make_inputs(device)) for _ in range(sets - 1)]


def measure(
    fn: Callable[..., Any],
    make_inputs: Callable[[torch.device], Inputs] | None = None,
    *,
    device: torch.device | str = "cpu",
    reps: int = 50,
    warmup: int = 5,
    input_sets: Sequence[Inputs] | None = None,
    sets: int | None = None,
    cuda_graph: bool = False,
    l2_bytes: int | None = None,
) -> Timing:
    """Time ``fn(*inputs)``; return the median and spread in ms over ``reps`` samples.

    Inputs come from ``input_sets`` if given, else from ``make_inputs(device)`` (called once per
    set, see `make_input_sets`), else ``fn()`` takes none. Call ``i`` uses set ``i % len(sets)``.

    CUDA (``device`` is a CUDA device): ``warmup`` untimed calls (compilation, autotuning, handle
    creation), a synchronize, then one pair of CUDA events around each call on the current stream,
    one synchronize at the end. With ``cuda_graph=True`` the calls over all sets (repeated to at
    least `MIN_CALLS_PER_REPLAY`) are captured in one graph after the warm-up; each sample is one
    replay's event time divided by the calls it holds, so CPU launch gaps are not counted.
    CPU: ``perf_counter`` around each call (``cuda_graph`` is an error there).
    """
    if reps < 1:
        raise ValueError(f"reps: expected >= 1, got {reps}")
    if warmup < 0:
        raise ValueError(f"warmup: expected >= 0, got {warmup}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if input_sets is None:
        if make_inputs is None:
            input_sets = [()]
        else:
            input_sets = make_input_sets(make_inputs, device, sets=sets, l2_bytes=l2_bytes)
    input_sets = [_as_tuple(s) for s in input_sets]
    if not input_sets:
        raise ValueError("input_sets: expected at least one set, got none")

    if device.type == "cuda":
        with torch.cuda.device(device):
            if cuda_graph:
                return _measure_cuda_graph(fn, input_sets, reps, warmup)
            return _measure_cuda_events(fn, input_sets, reps, warmup)
    if device.type == "cpu":
        if cuda_graph:
            raise ValueError("cuda_graph=True needs a CUDA device; device is cpu")
        return _measure_cpu(fn, input_sets, reps, warmup)
    raise ValueError(f"device: expected a cpu or cuda device, got {device}")


def _as_tuple(inputs: Any) -> Inputs:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _measure_cpu(fn: Callable[..., Any], sets: list[Inputs], reps: int, warmup: int) -> Timing:
    k = len(sets)
    for i in range(warmup):
        fn(*sets[i % k])
    samples = []
    clock = time.perf_counter
    for i in range(reps):
        args = sets[i % k]
        t0 = clock()
        fn(*args)
        samples.append((clock() - t0) * 1e3)
    return Timing.from_samples(samples, CLOCK_CPU, input_sets=k)


def _measure_cuda_events(
    fn: Callable[..., Any], sets: list[Inputs], reps: int, warmup: int
) -> Timing:
    k = len(sets)
    for i in range(warmup):
        fn(*sets[i % k])
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    # Warm-up (and input creation) must be finished before the first start event is recorded.
    torch.cuda.synchronize()
    for i in range(reps):
        args = sets[i % k]
        starts[i].record()
        fn(*args)
        ends[i].record()
    torch.cuda.synchronize()
    samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return Timing.from_samples(samples, CLOCK_CUDA, input_sets=k)


def _measure_cuda_graph(
    fn: Callable[..., Any], sets: list[Inputs], reps: int, warmup: int
) -> Timing:
    k = len(sets)
    rounds = max(1, math.ceil(MIN_CALLS_PER_REPLAY / k))
    calls = rounds * k
    # Warm up on a side stream, as torch.cuda.graphs documents: lazy initialisation (cuBLAS
    # handles, Triton compilation, torch.compile) must not happen during capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(max(warmup, 1)):
            fn(*sets[i % k])
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()

    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(rounds):
                for args in sets:
                    fn(*args)
    except Exception as exc:
        raise RuntimeError(
            f"CUDA graph capture failed ({type(exc).__name__}: {exc}); the function is not "
            "capturable (host sync, allocation on another stream, or work on the legacy default "
            "stream?). Time it without a graph (cuda_graph=False / --cuda-graph off)."
        ) from exc
    graph.replay()  # first replay uploads the graph; keep it out of the samples
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    torch.cuda.synchronize()
    for i in range(reps):
        starts[i].record()
        graph.replay()
        ends[i].record()
    torch.cuda.synchronize()
    samples = [s.elapsed_time(e) / calls for s, e in zip(starts, ends)]
    del graph
    return Timing.from_samples(samples, CLOCK_CUDA, input_sets=k, cuda_graph=True)
