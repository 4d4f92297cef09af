"""lm_layer under pytest-benchmark: the cases of haic_kernels/bench/suites/lm_layer.py."""

SUITE = "lm_layer"


def test_lm_layer(bench_case, run_bench_case):
    run_bench_case(bench_case)
