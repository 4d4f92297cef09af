"""fp8_linear under pytest-benchmark: the cases of haic_kernels/bench/suites/fp8_linear.py."""

SUITE = "fp8_linear"


def test_fp8_linear(bench_case, run_bench_case):
    run_bench_case(bench_case)
