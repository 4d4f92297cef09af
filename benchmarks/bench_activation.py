"""activation under pytest-benchmark: the cases of haic_kernels/bench/suites/activation.py."""

SUITE = "activation"


def test_activation(bench_case, run_bench_case):
    run_bench_case(bench_case)
