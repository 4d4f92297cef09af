"""Small synthetic clips whose frame index can be read back from the pixels.

Used by the tests (any codec PyAV can encode: VP9, H.264, MJPEG) and to make the bundled demo
clip. Each frame carries its index as a row of 10 black/white cells across the top band, big
enough to survive lossy compression; the rest is a moving colour gradient so frames differ.
"""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np

INDEX_BITS = 10


def make_frame(index: int, height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3]: the index bits in the top quarter, a gradient below."""
    if width < 2 * INDEX_BITS or height < 8:
        raise ValueError(f"frame {width}x{height} too small to carry {INDEX_BITS} index bits")
    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.empty((height, width, 3), np.uint8)
    frame[..., 0] = (xx * 255 // max(width - 1, 1) + 7 * index) % 256
    frame[..., 1] = (yy * 255 // max(height - 1, 1) + 13 * index) % 256
    frame[..., 2] = (128 + 40 * np.sin(index / 3.0 + xx / 9.0)).astype(np.uint8)
    band, cell = height // 4, width // INDEX_BITS
    for bit in range(INDEX_BITS):
        frame[:band, bit * cell : (bit + 1) * cell] = 255 if (index >> bit) & 1 else 0
    return frame


def read_index(frame: np.ndarray) -> int:
    """Recover the index written by make_frame from a decoded (full-size, uncropped) frame."""
    height, width = frame.shape[:2]
    band, cell = height // 4, width // INDEX_BITS
    index = 0
    for bit in range(INDEX_BITS):
        # The centre of each cell, away from edges where codecs smear.
        patch = frame[
            band // 4 : 3 * band // 4, bit * cell + cell // 4 : (bit + 1) * cell - cell // 4
        ]
        if patch.mean() > 127:
            index |= 1 << bit
    return index


def write_clip(
    path: str | os.PathLike,
    num_frames: int = 24,
    *,
    fps: int = 8,
    width: int = 96,
    height: int = 64,
    codec: str = "libvpx-vp9",
    pix_fmt: str | None = None,
    options: dict[str, str] | None = None,
) -> str:
    """Encode ``num_frames`` synthetic frames with PyAV; returns the path."""
    import av

    if pix_fmt is None:
        pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if options:
            stream.options = options
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(make_frame(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)
