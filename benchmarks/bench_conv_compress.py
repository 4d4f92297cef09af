"""conv_compress under pytest-benchmark: the cases of haic_kernels/bench/suites/conv_compress.py."""

SUITE = "conv_compress"


def test_conv_compress(bench_case, run_bench_case):
    run_bench_case(bench_case)
