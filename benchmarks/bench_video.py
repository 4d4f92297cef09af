"""video decoding under pytest-benchmark: the cases of haic_kernels/bench/suites/video.py."""

SUITE = "video"


def test_video(bench_case, run_bench_case):
    run_bench_case(bench_case)
