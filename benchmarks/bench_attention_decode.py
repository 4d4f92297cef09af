"""attention_decode under pytest-benchmark: haic_kernels/bench/suites/attention_decode.py."""

SUITE = "attention_decode"


def test_attention_decode(bench_case, run_bench_case):
    run_bench_case(bench_case)
