"""patch_embed under pytest-benchmark: the cases of haic_kernels/bench/suites/patch_embed.py."""

SUITE = "patch_embed"


def test_patch_embed(bench_case, run_bench_case):
    run_bench_case(bench_case)
