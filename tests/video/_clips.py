"""Clips the video tests write: synthetic frames (index readable from pixels) and bad files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from haic_kernels.video.synthetic import make_frame, write_clip

# Fast VP9 settings: the tests need decodable clips, not good compression.
VP9_FAST = {"cpu-used": "8", "deadline": "realtime"}
EXT = {"libvpx-vp9": "webm", "libvpx": "webm", "libx264": "mp4", "mjpeg": "avi"}


def has_encoder(codec: str) -> bool:
    import av

    return codec in av.codecs_available


def clip(folder: Path, name: str, codec: str = "libvpx-vp9", **kw) -> Path:
    opts = VP9_FAST if "vpx" in codec else None
    path = folder / f"{name}.{EXT[codec]}"
    return Path(write_clip(path, codec=codec, options=opts, **kw))


def vfr_clip(path: Path, times_s: list[float], width: int = 80, height: int = 48) -> Path:
    """A VP9 WebM whose frame i is shown at times_s[i] (variable frame rate, 1 ms clock)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libvpx-vp9", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = VP9_FAST
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_s):
            frame = av.VideoFrame.from_ndarray(make_frame(i, height, width), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def zero_frame_clip(path: Path) -> Path:
    """A WebM with a VP9 stream header and no frame."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libvpx-vp9", rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()  # write the header although no frame follows
    return path


def truncated_copy(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def text_file(path: Path) -> Path:
    path.write_text("this is not a video\n" * 20)
    return path


def pixel_stats(a, b) -> tuple[float, float, int]:
    """(mean, 99th percentile, max) of |a - b| over uint8 arrays/tensors."""
    d = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).ravel()
    return float(d.mean()), float(np.percentile(d, 99)), int(d.max())
