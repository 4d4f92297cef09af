"""The timing function: statistics, units, input rotation, and (on a GPU) the CUDA-event path."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from haic_kernels.bench.timing import (
    CLOCK_CPU,
    CLOCK_CUDA,
    L2_MULTIPLE,
    Timing,
    make_input_sets,
    measure,
    percentile,
    sets_needed,
    tensor_nbytes,
)


def test_cpu_stats_are_ordered_and_labelled():
    t = measure(lambda a: a @ a, lambda d: (torch.randn(64, 64, device=d),), reps=17, warmup=2)
    assert t.clock == CLOCK_CPU == "cpu_wall"
    assert t.n == 17 == len(t.samples_ms)
    assert t.min_ms <= t.p20_ms <= t.median_ms <= t.p80_ms <= t.max_ms
    assert t.min_ms > 0
    assert not t.cuda_graph


def test_cpu_time_is_in_milliseconds():
    # A 3 ms sleep must read as ~3 (not 0.003 or 3000): catches a unit slip.
    t = measure(lambda: time.sleep(0.003), reps=5, warmup=1)
    assert 2.9 <= t.median_ms < 60, t


def test_rotation_visits_every_set_in_order():
    sets = [(torch.full((2,), float(i) + 0.5),) for i in range(3)]
    seen: list[float] = []
    t = measure(lambda a: seen.append(a[0].item()), input_sets=sets, reps=7, warmup=2)
    warm, timed = seen[:2], seen[2:]
    assert warm == [0.5, 1.5]  # call i uses set i % 3
    assert timed == [0.5, 1.5, 2.5, 0.5, 1.5, 2.5, 0.5]
    assert t.input_sets == 3


def test_make_inputs_called_once_per_set_with_device():
    calls = []

    def make(device):
        calls.append(device)
        return torch.rand(4, device=device) + 1  # never zeros

    sets = make_input_sets(make, "cpu", sets=4)
    assert len(sets) == 4 and all(isinstance(s, tuple) and len(s) == 1 for s in sets)
    assert calls == [torch.device("cpu")] * 4
    assert len(make_input_sets(make, "cpu")) == 1  # CPU default: no L2 to rotate past


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    v = sorted(rng.random(37).tolist())
    for q in (0, 20, 50, 80, 100):
        assert percentile(v, q) == pytest.approx(np.percentile(v, q))
    with pytest.raises(ValueError):
        percentile([], 50)


def test_timing_from_samples_hand_computed():
    t = Timing.from_samples([5.0, 1.0, 3.0, 2.0, 4.0], CLOCK_CPU)
    assert (t.min_ms, t.median_ms, t.max_ms, t.n) == (1.0, 3.0, 5.0, 5)
    assert t.p20_ms == pytest.approx(1.8)  # position 0.8 between 1 and 2
    assert t.p80_ms == pytest.approx(4.2)


def test_sets_needed_exceeds_l2():
    l2 = 50 * 2**20
    set_bytes = 24 * 224 * 224 * 3  # patchify's 24 frames: 3.6 MB
    k = sets_needed(set_bytes, l2, min_sets=2)
    assert k == math.ceil(L2_MULTIPLE * l2 / set_bytes) == 30
    assert k * set_bytes >= L2_MULTIPLE * l2 > (k - 1) * set_bytes
    assert sets_needed(10 * l2, l2, min_sets=2) == 2  # big sets: still two
    assert sets_needed(1, l2, max_sets=64) == 64  # tiny sets: capped
    assert sets_needed(set_bytes, l2, budget_bytes=5 * set_bytes) == 5  # memory budget wins
    assert sets_needed(10 * set_bytes, l2, budget_bytes=set_bytes // 2) == 1  # always one


def test_tensor_nbytes_nested():
    a = torch.empty(3, 4, dtype=torch.bfloat16)
    b = torch.empty(5, dtype=torch.uint8)
    assert tensor_nbytes((a, [b, 7], {"x": a})) == 24 + 5 + 24


def test_bad_arguments():
    with pytest.raises(ValueError, match="reps"):
        measure(lambda: None, reps=0)
    with pytest.raises(ValueError, match="cuda_graph"):
        measure(lambda: None, cuda_graph=True, reps=1)


@pytest.mark.gpu
def test_cuda_events_path_sees_device_time():
    # A 512 MiB copy (1 GiB moved) takes ~0.2-0.4 ms on an H100/H200. If the events or the
    # synchronisation were wrong, the time would read as launch cost only and the bandwidth
    # would come out far above what the memory can do.
    from haic_kernels.bench.counts import gbps
    from haic_kernels.bench.roofline import datasheet_peaks

    dev = torch.device("cuda")
    src = torch.randn(2**27, device=dev)
    dst = torch.empty_like(src)
    ev = measure(torch.Tensor.copy_, input_sets=[(dst, src)], device=dev, reps=20, warmup=2)
    gr = measure(
        torch.Tensor.copy_, input_sets=[(dst, src)], device=dev, reps=20, warmup=2, cuda_graph=True
    )
    for t, graph in ((ev, False), (gr, True)):
        assert t.clock == CLOCK_CUDA == "cuda_events" and t.cuda_graph == graph and t.n == 20
        assert t.min_ms <= t.p20_ms <= t.median_ms <= t.p80_ms
    achieved = gbps(2 * src.numel() * 4, ev.median_ms)
    sheet = datasheet_peaks(torch.cuda.get_device_name(dev))
    ceiling = 1.2 * sheet.gbps if sheet else 20_000
    assert 100 < achieved < ceiling, (achieved, ev)
    # One long kernel per call: graph replay and plain events must agree.
    assert gr.median_ms == pytest.approx(ev.median_ms, rel=0.25)


@pytest.mark.gpu
def test_cuda_input_sets_exceed_l2():
    from haic_kernels.bench.timing import l2_cache_bytes

    dev = torch.device("cuda")
    l2 = l2_cache_bytes(dev)
    assert l2 > 0
    sets = make_input_sets(
        lambda d: (torch.randint(0, 256, (24, 224, 224, 3), dtype=torch.uint8, device=d),), dev
    )
    total = sum(tensor_nbytes(s) for s in sets)
    assert total >= L2_MULTIPLE * l2 and len(sets) >= 2
    assert len({s[0].data_ptr() for s in sets}) == len(sets)  # distinct buffers


@pytest.mark.gpu
def test_measure_peaks_plausible_and_cached():
    from haic_kernels.bench.roofline import SOURCE_MEASURED, measure_peaks

    p = measure_peaks("cuda")
    assert p is not None and p.source == SOURCE_MEASURED
    assert 200 < p.gbps < 20_000 and 20 < p.tflops < 5_000, p
    assert measure_peaks("cuda") is p
