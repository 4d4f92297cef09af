"""The vision_reduction bench suite builds its cases with the FLOP model's work, and each case
runs (tiny, CPU): dense first as the baseline, merges cheaper, overhead cases carry no FLOPs."""

from __future__ import annotations

import torch

from haic_kernels.bench.suites import vision_reduction


def test_cases_and_one_run():
    cases = vision_reduction.cases("tiny", torch.device("cpu"))
    labels = [c.backend for c in cases]
    assert labels[0] == "dense" and cases[0].baseline and not any(c.baseline for c in cases[1:])
    merges = [c for c in cases if c.backend.startswith("merge")]
    assert merges and all(0 < c.flops < cases[0].flops for c in merges)
    assert [c.flops for c in cases if c.backend.startswith("overhead")] == [0] * len(merges)
    static = next(c for c in cases if c.backend.startswith("static"))
    assert static.flops < cases[0].flops  # every other frame repeats: half the later patches
    inputs = cases[0].make_inputs(torch.device("cpu"))
    dense = cases[0].fn(*inputs)
    for c in (static, merges[0], next(c for c in cases if c.backend.startswith("overhead"))):
        out = c.fn(*inputs)
        assert out.shape == dense.shape and torch.isfinite(out).all()
