"""vision_reduction under pytest-benchmark: the cases of bench/suites/vision_reduction.py."""

SUITE = "vision_reduction"


def test_vision_reduction(bench_case, run_bench_case):
    run_bench_case(bench_case)
