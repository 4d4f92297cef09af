"""expert_linear under pytest-benchmark: the cases of haic_kernels/bench/suites/expert_linear.py."""

SUITE = "expert_linear"


def test_expert_linear(bench_case, run_bench_case):
    run_bench_case(bench_case)
