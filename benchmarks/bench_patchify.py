"""patchify under pytest-benchmark: the cases of haic_kernels/bench/suites/patchify.py."""

SUITE = "patchify"


def test_patchify(bench_case, run_bench_case):
    run_bench_case(bench_case)
