"""Sampling policies against straightforward re-statements of the release's rules."""

from __future__ import annotations

import random

import numpy as np
import pytest

from haic_kernels.video import frame_timestamps, sample_frames


def _chat_rule(ts: list[float], max_frames: int) -> list[int]:
    # The release's demo: for each second up to round(max timestamp), min() over all timestamps
    # by distance (first wins ties), stop at max_frames.
    out = []
    for second in range(round(max(ts)) + 1):
        closest = min(ts, key=lambda t: abs(t - second))
        out.append(ts.index(closest))
        if len(out) >= max_frames:
            break
    return out


@pytest.mark.parametrize(
    "num_frames,fps", [(1, 30.0), (7, 2.0), (30, 30.0), (240, 8.0), (1801, 29.97)]
)
def test_chat_matches_rule_constant_rate(num_frames: int, fps: float) -> None:
    sel = sample_frames(num_frames, fps, "chat")
    ts = frame_timestamps(num_frames, fps)
    assert list(sel.indices) == _chat_rule(ts, 24)
    assert sel.timestamps == tuple(ts[i] for i in sel.indices)


def test_chat_matches_rule_variable_rate() -> None:
    rng = random.Random(1234)
    for _ in range(50):
        n = rng.randint(1, 400)
        gaps = [rng.choice([1 / 30, 1 / 24, 0.5, 0.0, 1.3]) for _ in range(n - 1)]
        ts = [0.0]
        for g in gaps:
            ts.append(ts[-1] + g)
        sel = sample_frames(n, policy="chat", timestamps=ts)
        assert list(sel.indices) == _chat_rule(ts, 24), ts


def test_chat_one_fps_and_cap() -> None:
    sel = sample_frames(60 * 30, 30.0, "chat")
    assert len(sel) == 24
    assert list(sel.indices) == [30 * s for s in range(24)]
    short = sample_frames(5 * 30, 30.0, "chat")  # a 5 s video: fewer frames
    assert len(short) == 6  # seconds 0..5, the last one clamps to the final frame


@pytest.mark.parametrize("num_frames,fps", [(10, 5.0), (24, 1.0), (900, 30.0), (3600, 24.0)])
def test_base_matches_numpy_linspace(num_frames: int, fps: float) -> None:
    sel = sample_frames(num_frames, fps, "base")
    end = min(num_frames, int(60 * fps))
    expected = np.linspace(0, end - 1, 24, dtype=int).tolist()
    assert list(sel.indices) == expected
    assert len(sel) == 24  # short videos repeat frames rather than returning fewer


@pytest.mark.parametrize("num_frames,n", [(1, 24), (5, 3), (1000, 24), (97, 97), (12345, 7)])
def test_uniform_matches_numpy_linspace(num_frames: int, n: int) -> None:
    sel = sample_frames(num_frames, 25.0, "uniform", max_frames=n)
    assert list(sel.indices) == np.linspace(0, num_frames - 1, n, dtype=int).tolist()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_frames=0, fps=30.0), "num_frames"),
        (dict(num_frames=10, fps=0.0), "fps"),
        (dict(num_frames=10, fps=float("nan")), "fps"),
        (dict(num_frames=10), "fps"),
        (dict(num_frames=10, fps=30.0, policy="random"), "policy"),
        (dict(num_frames=10, fps=30.0, max_frames=0), "max_frames"),
        (dict(num_frames=3, timestamps=[0.0, 1.0]), "timestamps"),
        (dict(num_frames=3, timestamps=[0.0, 2.0, 1.0]), "non-decreasing"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_frames(**kwargs)
