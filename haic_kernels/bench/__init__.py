"""Benchmark harness: one timing function, counted work, measured peaks, JSON, tables, plots.

    from haic_kernels.bench import Case, measure, measure_peaks
    t = measure(fn, make_inputs, device="cuda")   # Timing: median_ms, p20_ms, p80_ms, ..., clock

Suites of cases live in haic_kernels/bench/suites/<op>.py; `haic bench` (cli.py) and
benchmarks/bench_<op>.py (pytest-benchmark) time the same cases.
"""

from __future__ import annotations

from haic_kernels.bench.counts import (
    fraction,
    gbps,
    io_bytes,
    matmul_flops,
    nbytes,
    speedup,
    tflops,
)
from haic_kernels.bench.roofline import Peaks, datasheet_peaks, measure_peaks
from haic_kernels.bench.runner import Case, RunOutput, make_row, run, time_case
from haic_kernels.bench.timing import CLOCK_CPU, CLOCK_CUDA, Timing, make_input_sets, measure

__all__ = [
    "CLOCK_CPU",
    "CLOCK_CUDA",
    "Case",
    "Peaks",
    "RunOutput",
    "Timing",
    "datasheet_peaks",
    "fraction",
    "gbps",
    "io_bytes",
    "make_input_sets",
    "make_row",
    "matmul_flops",
    "measure",
    "measure_peaks",
    "nbytes",
    "run",
    "speedup",
    "tflops",
    "time_case",
]
