"""token_prune under pytest-benchmark: the cases of haic_kernels/bench/suites/token_prune.py."""

SUITE = "token_prune"


def test_token_prune(bench_case, run_bench_case):
    run_bench_case(bench_case)
