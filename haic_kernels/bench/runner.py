"""Benchmark cases and the loop that times them.

A suite (haic_kernels/bench/suites/<name>.py) turns a size ("tiny", "full") and a device into a
list of `Case` objects: one per (shapes, backend). `run` times each case with `timing.measure`,
turns the times into rows with the ratio columns, and collects what was skipped (cannot run
here) or failed (raised, or gave a wrong answer). The CLI (`haic bench`) and the pytest-benchmark
files (benchmarks/bench_<op>.py) both time the same Case objects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from haic_kernels.bench import counts
from haic_kernels.bench.results import add_speedups
from haic_kernels.bench.roofline import Peaks
from haic_kernels.bench.timing import Timing, make_input_sets, measure

SIZES = ("tiny", "full")


@dataclass(frozen=True)
class Case:
    """One thing to time: a callable on fresh random inputs, with its work counted.

    ``make_inputs(device)`` returns a tuple of positional arguments for ``fn``, drawn at random
    (never zeros: zeros hide unwritten outputs and can run faster than real data).
    ``flops``/``bytes`` are the work of one call; ``bytes`` is the fewest that must move (each
    input read once, each output written once). Cases with equal ``suite`` and ``name`` have the
    same shapes and are compared with each other; ``baseline`` cases (e.g. "torch eager",
    "torch.compile") are the denominators of the speed-up columns. ``check(output, inputs)``
    raises if an output is wrong; it runs once before timing. ``skip_reason`` set means the
    backend cannot run here (listed as skipped, not an error). ``cuda_graph`` asks for CUDA
    graph replay timing (for launch-bound cases).
    """

    suite: str
    name: str
    backend: str
    shapes: dict[str, int]
    dtype: str
    flops: int
    bytes: int
    make_inputs: Callable[[torch.device], tuple[Any, ...]]
    fn: Callable[..., Any]
    baseline: bool = False
    skip_reason: str | None = None
    check: Callable[[Any, tuple[Any, ...]], None] | None = None
    cuda_graph: bool = False

    @property
    def id(self) -> str:
        """A test id: 'case-backend' with only [a-z0-9_.-]."""
        return f"{self.name}-{norm_backend(self.backend).replace(' ', '_')}"


@dataclass
class RunOutput:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    peaks: Peaks | None = None


def norm_backend(label: str) -> str:
    """Backend labels compare case-insensitively with '-' and '_' read as spaces."""
    return re.sub(r"[\s_\-]+", " ", label.strip().lower())


def filter_backends(cases: Sequence[Case], backends: Sequence[str] | None) -> list[Case]:
    """Keep the cases whose backend is in ``backends`` (None keeps all).

    Raises ValueError naming the known labels if a requested backend matches no case.
    """
    if not backends:
        return list(cases)
    wanted = {norm_backend(b) for b in backends}
    known = {norm_backend(c.backend) for c in cases}
    unknown = sorted(wanted - known)
    if unknown:
        labels = ", ".join(sorted({c.backend for c in cases}))
        raise ValueError(f"--backends: unknown {unknown}; these suites have: {labels}")
    return [c for c in cases if norm_backend(c.backend) in wanted]


def make_row(case: Case, timing: Timing, peaks: Peaks | None) -> dict[str, Any]:
    """A result row (see results.py) for one timed case; speed-ups are added by `run`."""
    ms = timing.median_ms
    tf = counts.tflops(case.flops, ms) if ms > 0 and case.flops else None
    gb = counts.gbps(case.bytes, ms) if ms > 0 and case.bytes else None
    return {
        "suite": case.suite,
        "case": case.name,
        "backend": case.backend,
        "baseline": case.baseline,
        "shapes": dict(case.shapes),
        "dtype": case.dtype,
        "flops": case.flops,
        "bytes": case.bytes,
        "median_ms": timing.median_ms,
        "p20_ms": timing.p20_ms,
        "p80_ms": timing.p80_ms,
        "min_ms": timing.min_ms,
        "n": timing.n,
        "clock": timing.clock,
        "input_sets": timing.input_sets,
        "cuda_graph": timing.cuda_graph,
        "tflops": tf,
        "gbps": gb,
        "frac_peak_gbps": counts.fraction(gb, peaks.gbps) if gb is not None and peaks else None,
        "frac_peak_tflops": (
            counts.fraction(tf, peaks.tflops) if tf is not None and peaks else None
        ),
    }


def _entry(case: Case, reason: str) -> dict[str, Any]:
    return {"suite": case.suite, "case": case.name, "backend": case.backend, "reason": reason}


def time_case(
    case: Case,
    device: torch.device,
    *,
    reps: int,
    warmup: int,
    cuda_graph: bool | None = None,
    input_sets: list[tuple[Any, ...]] | None = None,
) -> Timing:
    """Check one case's output once, then time it. ``cuda_graph`` None means the case's choice."""
    if input_sets is None:
        input_sets = make_input_sets(case.make_inputs, device)
    if case.check is not None:
        out = case.fn(*input_sets[0])
        case.check(out, input_sets[0])
        del out
    use_graph = case.cuda_graph if cuda_graph is None else cuda_graph
    use_graph = use_graph and device.type == "cuda"
    return measure(
        case.fn,
        device=device,
        input_sets=input_sets,
        reps=reps,
        warmup=warmup,
        cuda_graph=use_graph,
    )


def run(
    cases: Sequence[Case],
    device: torch.device | str,
    *,
    reps: int,
    warmup: int,
    peaks: Peaks | None = None,
    cuda_graph: bool | None = None,
    progress: bool = True,
) -> RunOutput:
    """Time every case that can run here; return rows (with speed-ups), skipped and failed."""
    device = torch.device(device)
    out = RunOutput(peaks=peaks)
    todo = list(cases)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="case", leave=False)
    for case in todo:
        if bar is not None:
            bar.set_description(f"{case.suite} {case.id}")
        try:
            if case.skip_reason:
                out.skipped.append(_entry(case, case.skip_reason))
                continue
            try:
                timing = time_case(case, device, reps=reps, warmup=warmup, cuda_graph=cuda_graph)
            except Exception as exc:
                out.failed.append(_entry(case, f"{type(exc).__name__}: {exc}"))
                continue
            out.rows.append(make_row(case, timing, peaks))
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    add_speedups(out.rows)
    return out
