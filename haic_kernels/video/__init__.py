"""Video and image input: frame sampling, decoders, the batch loader, the release's preprocessing.

`sample_frames` is pure Python. Everything else imports its libraries lazily: PyAV (CPU, any
FFmpeg codec) in `pyav`, NVIDIA DALI (NVDEC on a GPU, or its CPU decoder for VP8/VP9/MJPEG) in
`dali`; `VideoLoader` (`loader`) picks between them per video and batches the frames.
`preprocess_frames` (`frames`) is the resize/crop/normalize of both modes (``"release"``,
``"fast"``), `Resizer` the same for one frame at a time into preallocated arrays; `load_image`
(`image`, Pillow) the image release's 1344x1344 bicubic path.
"""

from __future__ import annotations

from .sampling import POLICIES, FrameSelection, frame_timestamps, sample_frames

_LAZY = {
    "VideoDecodeError": "pyav",
    "VideoInfo": "pyav",
    "DecodedFrames": "pyav",
    "decode_frames": "pyav",
    "read_frames": "pyav",
    "FAST_MAX_ERROR": "frames",
    "Orientation": "frames",
    "PREPROCESS_MODES": "frames",
    "Resizer": "frames",
    "preprocess_frames": "frames",
    "IMAGE_SIZE": "image",
    "ImageLoadError": "image",
    "load_image": "image",
    "preprocess_image": "image",
    "load_video": "pyav",
    "probe_video": "pyav",
    "DaliVideoDecoder": "dali",
    "VideoBatch": "loader",
    "VideoError": "loader",
    "VideoLoader": "loader",
    "shard_bounds": "loader",
    "ManifestError": "manifest",
    "ManifestRecord": "manifest",
    "read_manifest": "manifest",
    "write_manifest": "manifest",
}

__all__ = ["POLICIES", "FrameSelection", "frame_timestamps", "sample_frames", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'haic_kernels.video' has no attribute {name!r}")
