"""norm under pytest-benchmark: the cases of haic_kernels/bench/suites/norm.py."""

SUITE = "norm"


def test_norm(bench_case, run_bench_case):
    run_bench_case(bench_case)
