"""Video input: frame sampling policies and decoders.

`sample_frames` is pure Python. Decoders import their libraries lazily: PyAV (CPU, any FFmpeg
codec) here; the DALI GPU loader arrives with its own issue.
"""

from __future__ import annotations

from .sampling import POLICIES, FrameSelection, frame_timestamps, sample_frames

__all__ = [
    "POLICIES",
    "FrameSelection",
    "VideoDecodeError",
    "VideoInfo",
    "decode_frames",
    "frame_timestamps",
    "load_video",
    "probe_video",
    "sample_frames",
]


def __getattr__(name: str):
    if name in {"VideoDecodeError", "VideoInfo", "decode_frames", "load_video", "probe_video"}:
        from . import pyav

        return getattr(pyav, name)
    raise AttributeError(f"module 'haic_kernels.video' has no attribute {name!r}")
