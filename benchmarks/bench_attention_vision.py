"""attention_vision under pytest-benchmark: the cases of bench/suites/attention_vision.py."""

SUITE = "attention_vision"


def test_attention_vision(bench_case, run_bench_case):
    run_bench_case(bench_case)
