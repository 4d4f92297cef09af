"""pytest-benchmark over the same Case objects as `haic bench`.

    pytest benchmarks/ --size tiny                       # CPU: wall time, seconds
    pytest benchmarks/ --size full --benchmark-json out.json
    pytest benchmarks/ --benchmark-disable               # smoke test: each case runs a few times

A file benchmarks/bench_<op>.py sets ``SUITE = "<op>"`` and has one test taking the fixtures
``bench_case`` (parametrized here over the suite's cases) and ``run_bench_case``. pytest-benchmark
times each case by wall clock around a synchronized call; our own device-time figures (CUDA
events, input sets rotated past the L2) and the ratios go into ``benchmark.extra_info``; env and
measured peaks go into the JSON under "haic".
"""

from __future__ import annotations

import fnmatch
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from haic_kernels.bench import suites
from haic_kernels.bench.env import collect_env
from haic_kernels.bench.results import SPEEDUP_PREFIX, slug
from haic_kernels.bench.roofline import Peaks, measure_peaks
from haic_kernels.bench.runner import Case, make_row, time_case
from haic_kernels.bench.timing import make_input_sets

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("haic bench")
    group.addoption(
        "--size",
        choices=("tiny", "full", "all"),
        default=None,
        help="benchmark shapes: tiny (CPU, seconds) or full (the model's); "
        "default full on CUDA, tiny on the CPU",
    )
    group.addoption("--bench-reps", type=int, default=None, help="timed runs (100 CUDA, 20 CPU)")
    group.addoption("--bench-warmup", type=int, default=None, help="warm-up runs (10 CUDA, 3 CPU)")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # Collect bench_*.py here without changing the project's python_files setting, unless pytest
    # collects them itself: a file named on the command line, or matched by python_files.
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    if parent.session.isinitpath(file_path):
        return None
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def _size(config: pytest.Config) -> str:
    return config.getoption("--size") or ("full" if DEVICE.type == "cuda" else "tiny")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_case" not in metafunc.fixturenames:
        return
    suite = getattr(metafunc.module, "SUITE", None)
    if suite is None:
        raise pytest.UsageError(f"{metafunc.module.__name__}: set SUITE = '<suite name>'")
    cases = suites.cases(suite, _size(metafunc.config), DEVICE)
    metafunc.parametrize("bench_case", cases, ids=[c.id for c in cases])


@pytest.fixture(scope="session")
def bench_peaks() -> dict[str, Any] | None:
    peaks = measure_peaks(DEVICE)
    return peaks.to_dict() if peaks else None


@pytest.fixture(scope="session")
def _baseline_medians() -> dict[tuple[str, str, str], float]:
    return {}


@pytest.fixture
def run_bench_case(benchmark, request, bench_peaks, _baseline_medians):
    """``run_bench_case(case)``: time ``case`` our way and through pytest-benchmark."""
    config = request.config
    cuda = DEVICE.type == "cuda"
    reps = config.getoption("--bench-reps") or (100 if cuda else 20)
    warmup = config.getoption("--bench-warmup")
    warmup = warmup if warmup is not None else (10 if cuda else 3)
    if benchmark.disabled:  # smoke test: prove the path runs, not how fast
        reps, warmup = 2, 1

    def run(case: Case) -> dict[str, Any]:
        if case.skip_reason:
            pytest.skip(case.skip_reason)
        sets = make_input_sets(case.make_inputs, DEVICE)
        timing = time_case(case, DEVICE, reps=reps, warmup=warmup, input_sets=sets)
        row = make_row(case, timing, Peaks(**bench_peaks) if bench_peaks else None)
        key = (case.suite, case.name)
        if case.baseline:
            _baseline_medians[(*key, case.backend)] = timing.median_ms
        for (suite, name, backend), base_ms in _baseline_medians.items():
            if (suite, name) == key:
                row[SPEEDUP_PREFIX + slug(backend)] = base_ms / timing.median_ms
        benchmark.group = f"{case.suite}/{case.name}"
        benchmark.extra_info.update(row)

        cycle = itertools.cycle(sets)

        def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
            if cuda:
                torch.cuda.synchronize()  # nothing earlier may spill into the timed round
            return next(cycle), {}

        def target(*args: Any) -> Any:
            result = case.fn(*args)
            if cuda:
                torch.cuda.synchronize()  # wall time must include the device work
            return result

        benchmark.pedantic(target, setup=setup, rounds=reps, warmup_rounds=warmup)
        return row

    return run


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:
    # Result files get committed: keep host names out (pytest-benchmark records one).
    output_json.get("machine_info", {}).pop("node", None)
    peaks = measure_peaks(DEVICE)
    output_json["haic"] = {
        "env": collect_env(DEVICE),
        "peaks": peaks.to_dict() if peaks else None,
        "size": _size(config),
        "note": "extra_info holds device time (clock cuda_events) or cpu_wall; stats are wall",
    }
