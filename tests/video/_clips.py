"""Clips the video tests write: synthetic frames (index readable from pixels) and bad files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from haic_kernels.video.synthetic import make_frame, write_clip

#: DALI CPU vs PyAV, |diff| in uint8 levels over all frames of the tiny synthetic clips below
#: (hard colour edges: the worst case for chroma upsampling), measured with DALI 2.4.0 and
#: PyAV 18.1 / FFmpeg 8 (VP9, VP8, MJPEG, VFR VP9): full resolution mean <= 3.26, p99 <= 24,
#: max <= 72; resized to 40 (short side 48-64 -> 40) mean <= 2.18, p99 <= 18, max <= 62. The
#: tests allow about 10% more than measured and no max bound (README "Video input").
DECODER_TOL_FULL = (3.6, 26.0)
DECODER_TOL_RESIZED = (2.4, 20.0)

# Fast VP9 settings: the tests need decodable clips, not good compression.
VP9_FAST = {"cpu-used": "8", "deadline": "realtime"}
EXT = {"libvpx-vp9": "webm", "libvpx": "webm", "libx264": "mp4", "mjpeg": "avi"}


def within(a, b, tol: tuple[float, float]) -> bool:
    """Whether uint8 frames ``a`` and ``b`` differ by at most ``tol`` = (mean, p99) levels."""
    mean, p99, _ = pixel_stats(a, b)
    return mean <= tol[0] and p99 <= tol[1]


def need(corpus: dict, name: str) -> Path:
    """``corpus[name]``, or skip: the corpus leaves out clips this PyAV build cannot encode."""
    import pytest

    if name not in corpus:
        pytest.skip(f"{name}: this PyAV build has no encoder for it")
    return corpus[name]


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


# ---------------------------------------------------------------------------------------------
# The awkward-video corpus (each a few frames; tests/video/conftest.py caches them per session)
# ---------------------------------------------------------------------------------------------


def _encode(container, stream, num_frames: int, height: int, width: int, times=None) -> None:
    import av

    for i in range(num_frames):
        frame = av.VideoFrame.from_ndarray(make_frame(i, height, width), format="rgb24")
        if times is not None:
            frame.pts, frame.time_base = times[i], stream.codec_context.time_base
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def rotated_clip(
    path: Path, degrees: int, codec: str = "libx264", hflip: bool = False, num_frames: int = 12
) -> Path:
    """A clip whose display matrix turns it ``degrees`` counter-clockwise (then mirrors it), as a
    phone writes portrait video: the pixels are stored landscape, 96x64."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(8))
        stream.width, stream.height = 96, 64
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if "vpx" in codec:
            stream.options = VP9_FAST
        stream.set_display_rotation(degrees, hflip=hflip)
        _encode(container, stream, num_frames, 64, 96)
    return path


def stream_copy_cut(src: Path, dst: Path, cut: int, keyframe: int, fps: int = 8) -> Path:
    """What ``ffmpeg -ss <cut / fps> -i src -c copy dst.mp4`` writes: packets from the key frame
    before ``cut`` on, timestamps shifted so frame ``cut`` starts at 0; the preroll gets negative
    timestamps, which the MP4 muxer turns into an edit list that hides it."""
    import av

    with av.open(str(src)) as ic:
        ist = ic.streams.video[0]
        step = round(1 / (fps * ist.time_base))
        with av.open(str(dst), mode="w") as oc:
            ost = oc.add_stream_from_template(ist)
            for packet in ic.demux(ist):
                if packet.size == 0 or packet.pts is None or packet.pts < keyframe * step:
                    continue
                packet.pts -= cut * step
                packet.dts -= cut * step
                packet.stream = ost
                oc.mux(packet)
    return dst


def raw_stream(path: Path, codec: str = "libx264", num_frames: int = 14) -> Path:
    """A raw Annex B elementary stream (``.h264`` / ``.hevc``): no container, no timestamps."""
    import av

    fmt = {"libx264": "h264", "libx265": "hevc"}[codec]
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        if codec == "libx265":
            stream.options = {"x265-params": "log-level=none"}
        _encode(container, stream, num_frames, 64, 96)
    return path


def swapped_pts_clip(path: Path, swap: int, num_frames: int = 10) -> Path:
    """An intra-only (MJPEG) Matroska clip whose packets ``swap`` and ``swap + 1`` carry each
    other's timestamps: the decoder outputs them in file order, but by their timestamps frame
    ``swap + 1``'s picture is shown first (what a player and decord show)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mjpeg", rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuvj420p"
        stream.codec_context.time_base = Fraction(1, 8)
        order = list(range(num_frames))
        order[swap], order[swap + 1] = order[swap + 1], order[swap]
        packets = []
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(make_frame(i, 64, 96), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 8)
            packets += stream.encode(frame)
        packets += stream.encode()
        for i, packet in enumerate(packets):
            # dts one tick behind stays increasing and never after pts, as muxers require.
            packet.pts, packet.dts = order[i], i - 1
            packet.time_base = Fraction(1, 8)
            container.mux(packet)
    return path


def corrupt_packet_copy(src: Path, dst: Path, frame: int, seed: int = 0) -> Path:
    """A copy of ``src`` whose ``frame``-th frame (presentation order) has its payload replaced
    by noise, a few bytes in so the container still parses."""
    import av

    with av.open(str(src)) as c:
        packets = sorted((p.pts, p.pos, p.size) for p in c.demux(video=0) if p.size)
    _pts, pos, size = packets[frame]
    data = bytearray(src.read_bytes())
    noise = np.random.default_rng(seed).integers(0, 256, size - 4, dtype=np.uint8)
    data[pos + 4 : pos + size] = noise.tobytes()
    dst.write_bytes(bytes(data))
    return dst
