"""The awkward-video corpus, written once per test session (a few frames each, tiny sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ._clips import (
    clip,
    corrupt_packet_copy,
    has_encoder,
    raw_stream,
    rotated_clip,
    stream_copy_cut,
    swapped_pts_clip,
    truncated_copy,
    vfr_clip,
)

#: Frame times of the VFR clip (seconds).
VFR_TIMES = [0.0, 0.1, 0.15, 0.6, 1.2, 1.25, 2.0, 2.05, 3.4]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """name -> path. Keys missing when this PyAV build lacks the encoder (tests skip, saying so).

    - ``rot90`` / ``rot270`` / ``rot180`` / ``rot90_mirror``: H.264 MP4 (MJPEG when libx264 is
      absent), 12 frames 96x64, display matrix turning them (counter-clockwise degrees).
    - ``rot90_vp9``: the same as a VP9 WebM (a codec DALI's CPU decoder reads).
    - ``cut``: 32 H.264 frames, key frame every 8, 2 B-frames, stream-copy cut at frame 11
      (preroll 8..10 hidden by an edit list): 21 frames, showing source frames 11..31.
    - ``cut_vp9``: the same cut of a VP9-in-MP4 stream.
    - ``h264_raw`` / ``hevc_raw``: Annex B elementary streams, 14 frames at 8 fps.
    - ``vfr``: VP9 WebM, frames at `VFR_TIMES`.
    - ``swapped``: MJPEG Matroska, packets 4 and 5 carry each other's timestamps.
    - ``trunc``: the first half of a 3 s VP9 clip.
    - ``corrupt``: 40 H.264 frames, key frame every 10, frame 15's payload replaced by noise.
    """
    d = tmp_path_factory.mktemp("corpus")
    h264 = has_encoder("libx264")
    rot_codec = "libx264" if h264 else "mjpeg"
    ext = "mp4" if h264 else "mkv"
    out = {
        "rot90": rotated_clip(d / f"rot90.{ext}", 90, rot_codec),
        "rot270": rotated_clip(d / f"rot270.{ext}", 270, rot_codec),
        "rot180": rotated_clip(d / f"rot180.{ext}", 180, rot_codec),
        "rot90_mirror": rotated_clip(d / f"rot90m.{ext}", 90, rot_codec, hflip=True),
        "rot90_vp9": rotated_clip(d / "rot90.webm", 90, "libvpx-vp9"),
        "vfr": vfr_clip(d / "vfr.webm", VFR_TIMES),
        "swapped": swapped_pts_clip(d / "swapped.mkv", 4),
    }
    vp9_src = clip(d, "vp9_src", num_frames=24, fps=8, width=96, height=64)
    out["trunc"] = truncated_copy(vp9_src, d / "trunc.webm", 0.5)
    gop8 = {"g": "8", "keyint_min": "8"}
    vp9_mp4 = d / "vp9_src.mp4"
    from haic_kernels.video.synthetic import write_clip

    write_clip(vp9_mp4, 32, fps=8, codec="libvpx-vp9", options={"g": "8", "cpu-used": "8",
               "deadline": "realtime"})  # fmt: skip
    out["cut_vp9"] = stream_copy_cut(vp9_mp4, d / "cut_vp9.mp4", cut=11, keyframe=8)
    if h264:
        src = Path(write_clip(d / "h264_src.mp4", 32, fps=8, codec="libx264",
                              options={**gop8, "bf": "2", "sc_threshold": "0"}))  # fmt: skip
        out["cut"] = stream_copy_cut(src, d / "cut.mp4", cut=11, keyframe=8)
        out["h264_raw"] = raw_stream(d / "clip.h264", "libx264")
        src40 = Path(write_clip(d / "h264_40.mp4", 40, fps=8, codec="libx264",
                                options={"g": "10", "sc_threshold": "0"}))  # fmt: skip
        out["corrupt"] = corrupt_packet_copy(src40, d / "corrupt.mp4", frame=15)
    if has_encoder("libx265"):
        out["hevc_raw"] = raw_stream(d / "clip.hevc", "libx265")
    return out
