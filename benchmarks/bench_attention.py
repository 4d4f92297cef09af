"""attention under pytest-benchmark: the cases of haic_kernels/bench/suites/attention.py."""

SUITE = "attention"


def test_attention(bench_case, run_bench_case):
    run_bench_case(bench_case)
