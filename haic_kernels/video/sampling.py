"""Frame sampling policies of the CogVLM2-Video release, as pure functions of frame timing.

Nothing here decodes a pixel: a policy maps (frame count, frame rate or per-frame timestamps) to
the frame indices to decode and their timestamps in seconds, so every decoder backend fetches the
same frames for the same file.

Policies (MODEL_SPEC.md, "Video input"):

- ``chat``: for each whole second s = 0, 1, 2, ... up to the last frame's timestamp (rounded),
  the frame whose timestamp is closest to s (ties go to the earlier frame), at most ``max_frames``.
  Short videos give fewer frames.
- ``base``: ``max_frames`` indices spread evenly (truncating ``linspace``) over the frames of the
  first ``min(duration, base_max_seconds)`` seconds. Videos with fewer frames repeat frames.
- ``uniform``: ``max_frames`` indices spread evenly over the whole video.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

POLICIES = ("chat", "base", "uniform")


@dataclass(frozen=True)
class FrameSelection:
    """Which frames to decode. ``indices[i]`` is shown at ``timestamps[i]`` seconds."""

    indices: tuple[int, ...]
    timestamps: tuple[float, ...]
    policy: str

    def __len__(self) -> int:
        return len(self.indices)


def frame_timestamps(num_frames: int, fps: float) -> list[float]:
    """Timestamps of a constant-frame-rate video: frame i starts at i / fps seconds."""
    _check_count(num_frames)
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    return [i / fps for i in range(num_frames)]


def sample_frames(
    num_frames: int,
    fps: float | None = None,
    policy: str = "chat",
    *,
    max_frames: int = 24,
    timestamps: Sequence[float] | None = None,
    base_max_seconds: float = 60.0,
) -> FrameSelection:
    """Choose the frames a policy decodes.

    Args:
        num_frames: frames in the video (>= 1).
        fps: frame rate, used when ``timestamps`` is not given (constant frame rate).
        policy: ``"chat"``, ``"base"`` or ``"uniform"``.
        max_frames: the most frames returned (24 for CogVLM2-Video).
        timestamps: per-frame presentation times in seconds, non-decreasing, one per frame; pass
            them for variable-frame-rate videos.
        base_max_seconds: the ``base`` policy only looks at the first this-many seconds.
    """
    _check_count(num_frames)
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if not isinstance(max_frames, int) or max_frames < 1:
        raise ValueError(f"max_frames must be a positive int, got {max_frames!r}")
    ts = _resolve_timestamps(num_frames, fps, timestamps)

    if policy == "chat":
        indices = _closest_per_second(ts, max_frames)
    elif policy == "base":
        # Frames whose timestamp falls inside the first base_max_seconds (at least one frame).
        end = max(1, bisect.bisect_left(ts, base_max_seconds))
        indices = _spread(end, max_frames)
    else:
        indices = _spread(num_frames, max_frames)
    return FrameSelection(tuple(indices), tuple(ts[i] for i in indices), policy)


def _check_count(num_frames: int) -> None:
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(
            f"num_frames must be a positive int (a video with frames), got {num_frames!r}"
        )


def _resolve_timestamps(
    num_frames: int, fps: float | None, timestamps: Sequence[float] | None
) -> list[float]:
    if timestamps is None:
        if fps is None:
            raise ValueError("give either fps (constant frame rate) or timestamps")
        return frame_timestamps(num_frames, fps)
    ts = [float(t) for t in timestamps]
    if len(ts) != num_frames:
        raise ValueError(f"timestamps has {len(ts)} entries but num_frames is {num_frames}")
    if any(not math.isfinite(t) for t in ts):
        raise ValueError("timestamps must be finite")
    if any(b < a for a, b in itertools.pairwise(ts)):
        raise ValueError("timestamps must be non-decreasing (presentation order)")
    return ts


def _closest_per_second(ts: list[float], max_frames: int) -> list[int]:
    last_second = round(ts[-1])
    out: list[int] = []
    for second in range(last_second + 1):
        j = bisect.bisect_left(ts, second)
        # Candidates j-1 and j bracket `second`; the earlier one wins ties, as min() over a list
        # does in the original demo code.
        best = j if j < len(ts) else len(ts) - 1
        if j > 0 and (j == len(ts) or abs(ts[j - 1] - second) <= abs(ts[j] - second)):
            best = j - 1
        # Duplicate timestamps: the first frame showing that time.
        while best > 0 and ts[best - 1] == ts[best]:
            best -= 1
        out.append(best)
        if len(out) >= max_frames:
            break
    return out


def _spread(count: int, n: int) -> list[int]:
    """n indices spread evenly over [0, count - 1], truncated like numpy.linspace(dtype=int)."""
    if n == 1:
        return [0]
    step = (count - 1) / (n - 1)
    out = [int(i * step) for i in range(n - 1)]
    out.append(count - 1)  # numpy sets the endpoint exactly; i * step can land just below it
    return out
