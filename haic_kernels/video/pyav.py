"""CPU decoding with PyAV (FFmpeg): probe a file once, then decode only the frames a policy picked.

What a frame index means (every backend, and decord, the release's reader): frame ``i`` is the
frame with the ``i``-th smallest presentation timestamp among the packets the container presents.
Packets an MP4 edit list discards (the preroll of a stream-copy cut) are not frames; a raw
elementary stream (``.h264``, ``.hevc``: no timestamps) numbers its frames in output order at the
stream's frame rate.

`probe_video` reads packets only, plus the first frame for its display matrix (rotation).
`read_frames` decodes forward once and matches each decoded frame to its index by the frame's
own timestamp, so a frame the decoder outputs out of order, drops, or fails to decode cannot shift
the others; each wanted frame is converted to RGB, oriented, resized and cropped as soon as it
is decoded (`frames.Resizer`), on one helper thread while decoding goes on, so memory holds a
few full-size frames at a time (`MAX_PENDING_FRAMES` waiting, at most). Decode errors in
frames nobody asked for are skipped, as ffmpeg does; a wanted frame that is missing or depends on
corrupt data (decoded after a failed packet and before the next key frame) is an error.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections import defaultdict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from .frames import (
    IDENTITY,
    Orientation,
    Resizer,
    check_mode,
    orient_array,
    orientation_from_matrix,
)
from .sampling import FrameSelection, sample_frames

#: Codecs whose decoders output frames in packet order (no B-frame reordering): out-of-order
#: timestamps in their packets are the file's, not the codec's.
NO_REORDER_CODECS = frozenset({"mjpeg", "vp8", "vp9", "av1"})


class VideoDecodeError(RuntimeError):
    """A video could not be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` found. ``width``/``height`` are the decoded (coded) size; the
    displayed size swaps them when ``orientation`` turns the frame a quarter."""

    path: str
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    codec: str
    timestamps: tuple[float, ...]
    #: What the container's header says (None: not stated), checked against the packets.
    declared_duration: float | None = None
    #: The display matrix's transform (identity: none), as ffmpeg's autorotate applies it.
    orientation: Orientation = IDENTITY
    #: Sorted presentation timestamps of the frames in ``time_base`` units; None for streams
    #: without timestamps (frames are then numbered in output order).
    pts: tuple[int, ...] | None = None
    time_base: Fraction | None = None
    #: For codecs that never reorder frames (`NO_REORDER_CODECS`) whose packets' timestamps are
    #: out of order: the position in file (= decoder output) order of each frame index. A
    #: decoder that numbers frames in output order (DALI) must be asked for these.
    output_position: tuple[int, ...] | None = None

    @property
    def rotation(self) -> int:
        """Degrees counter-clockwise the display matrix turns the frames (0, 90, 180, 270)."""
        return self.orientation.rotation


@dataclass(frozen=True)
class DecodedFrames:
    """`read_frames`' result: ``frames[k]`` is index ``indices[k]``, shown at ``timestamps[k]``
    seconds from the first frame (the decoded frame's own timestamp)."""

    frames: torch.Tensor
    indices: tuple[int, ...]
    timestamps: tuple[float, ...]
    orientation: Orientation


def _import_av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "PyAV is not installed; install the video extra: pip install 'haic_kernels[video]'"
        ) from e
    return av


def _open(path: str | os.PathLike):
    p = Path(path)
    if not p.is_file():
        raise VideoDecodeError(path, "no such file")
    av = _import_av()
    try:
        container = av.open(str(p))
    except Exception as e:  # av.error.* are many; all mean the same to the caller
        raise VideoDecodeError(path, f"not a readable video ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    return container


def _display_matrix(frame) -> tuple[int, ...] | None:
    for sd in frame.side_data:
        if str(sd.type).endswith("DISPLAYMATRIX"):
            raw = bytes(sd)
            return struct.unpack("<9i", raw) if len(raw) == 36 else None
    return None


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, rate, per-frame timestamps and orientation: packets are read without decoding
    pixels, except the first frame (its display matrix). Every stream and codec attribute is read
    while the container is open."""
    container = _open(path)
    matrix, seen_frame = None, False
    pts: list[int] = []
    count = 0
    try:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        ctx.thread_count = 1  # the first frame comes out of the first key frame packet
        width, height, codec = ctx.width, ctx.height, ctx.name
        tb, avg, guessed = stream.time_base, stream.average_rate, stream.guessed_rate
        declared = _declared_duration(container, stream)
        for packet in container.demux(stream):
            if not seen_frame:
                try:
                    for frame in packet.decode():
                        matrix, seen_frame = _display_matrix(frame), True
                        width, height = frame.width, frame.height
                        break
                except Exception:  # a broken first packet leaves the identity orientation
                    pass
            if packet.size == 0 or packet.is_discard:
                continue
            count += 1
            if packet.pts is not None:
                pts.append(int(packet.pts))
    except Exception as e:
        raise VideoDecodeError(path, f"corrupt stream ({type(e).__name__}: {e})") from e
    finally:
        container.close()
    if count == 0:
        raise VideoDecodeError(path, "the video stream has no frames")
    has_pts = len(pts) == count and tb is not None
    fps = _frame_rate(guessed if not has_pts else avg or guessed, pts, tb, count)
    output_position = None
    if has_pts:
        if codec in NO_REORDER_CODECS and any(b < a for a, b in itertools.pairwise(pts)):
            ranked = sorted(range(count), key=lambda k: pts[k])
            output_position = tuple(ranked)
        pts.sort()  # packets come in decode order; frames are shown in presentation order
        ts = tuple(float((p - pts[0]) * tb) for p in pts)
    else:
        ts = tuple(i / fps for i in range(count))
    duration = ts[-1] + 1.0 / fps
    # A cut-off file still demuxes cleanly up to the cut; its header still gives the full length.
    if declared is not None and duration < declared - max(2.0 / fps + 0.05, 0.05 * declared):
        raise VideoDecodeError(
            path,
            f"truncated: frames end at {duration:.2f} s but the header says {declared:.2f} s "
            f"({len(ts)} frames found)",
        )
    return VideoInfo(
        path=str(path),
        num_frames=count,
        fps=fps,
        duration=duration,
        width=width,
        height=height,
        codec=codec,
        timestamps=ts,
        declared_duration=declared,
        orientation=orientation_from_matrix(matrix),
        pts=tuple(pts) if has_pts else None,
        time_base=tb if has_pts else None,
        output_position=output_position,
    )


def _frame_rate(rate, pts: list[int], tb, count: int) -> float:
    """The stream's stated rate (decord's ``get_avg_fps`` is the average rate; raw streams
    without timestamps state theirs in the codec's timing info), else frames over their span."""
    if rate and float(rate) > 0:
        return float(rate)
    if len(pts) > 1 and tb is not None and max(pts) > min(pts):
        return (count - 1) / float((max(pts) - min(pts)) * tb)
    return 25.0  # FFmpeg's default for raw streams that state nothing


def _declared_duration(container, stream) -> float | None:
    """The video stream's length from the header, or the container's when it holds only video
    (with audio, the container's length may be the audio's)."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0 and len(container.streams) == 1:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def read_frames(
    path: str | os.PathLike,
    indices: list[int] | tuple[int, ...],
    size: int | None = None,
    *,
    preprocess: str = "fast",
    autorotate: bool = True,
    info: VideoInfo | None = None,
) -> DecodedFrames:
    """Decode the frames at ``indices`` (see the module docstring) in one forward pass.

    Args:
        indices: frame indices, any order, repeats allowed (repeated in the output).
        size: ``None`` -> uint8 ``[len(indices), H, W, 3]`` at full resolution (oriented);
            else resized and cropped to ``size`` by `preprocess_frames` in mode ``preprocess``
            (``"fast"``: uint8 ``[N, size, size, 3]``; ``"release"``: float32 normalized
            ``[N, 3, size, size]``).
        autorotate: apply the display matrix (default, as ffmpeg and decord do).
        info: the file's `probe_video` result, if already known.

    Raises VideoDecodeError naming the file and the first frame that could not be produced.
    """
    check_mode(preprocess)
    if len(indices) == 0:
        raise ValueError("indices must name at least one frame")
    if any(not isinstance(i, (int, np.integer)) or isinstance(i, bool) for i in indices):
        raise ValueError(f"indices must be ints, got {list(indices)[:4]}")
    if min(indices) < 0:
        raise ValueError(f"indices must be non-negative, got {min(indices)}")
    info = info if info is not None else probe_video(path)
    wanted = sorted({int(i) for i in indices})
    if wanted[-1] >= info.num_frames:
        raise VideoDecodeError(
            path, f"frame {wanted[-1]} is past the end (the video has {info.num_frames} frames)"
        )
    orientation = info.orientation if autorotate else Orientation()
    slot = {i: k for k, i in enumerate(wanted)}
    if size is None:
        buf: np.ndarray | None = None

        def transform(arr: np.ndarray, i: int) -> np.ndarray:
            # NumPy's copy, not torch's: a torch copy of a full frame wakes its thread pool.
            return np.ascontiguousarray(orient_array(arr, orientation))
    else:
        # Each frame is preprocessed into its slot as it comes out of the decoder: one output
        # array for the whole call, no full-size copy kept, no allocation per frame.
        resizers: dict[tuple[int, ...], Resizer] = {}
        buf = None

        def transform(arr: np.ndarray, i: int) -> np.ndarray:
            nonlocal buf
            arr = orient_array(arr, orientation)
            resizer = resizers.get(arr.shape)
            if resizer is None:
                resizer = resizers[arr.shape] = Resizer(*arr.shape[:2], size, preprocess)
            if buf is None:
                buf = np.empty((len(wanted), *resizer.out_shape), resizer.out_dtype)
            return resizer(arr, buf[slot[i]])

    got = _decode_wanted(path, info, set(wanted), transform)
    if buf is not None and list(indices) == wanted:
        frames = torch.from_numpy(buf)  # the usual case: sorted, no repeats
    else:
        frames = torch.from_numpy(np.stack([got[i][0] for i in indices]))
    return DecodedFrames(
        frames, tuple(int(i) for i in indices), tuple(got[i][1] for i in indices), orientation
    )


#: Decoded frames waiting for `read_frames`' helper thread at most; then the decoding waits.
#: Each holds one full-size frame; two keep the helper busy when wanted frames come close.
MAX_PENDING_FRAMES = 2


def _to_rgb_then(transform, frame, i: int) -> np.ndarray:
    return transform(frame.to_ndarray(format="rgb24"), i)


def _decode_wanted(path, info: VideoInfo, wanted: set[int], transform) -> dict:
    """index -> (transformed frame, timestamp) for every wanted index, or VideoDecodeError.

    ``transform(rgb, index)`` runs on one helper thread while this thread goes on decoding:
    the RGB conversion and the preprocessing overlap the decoder instead of stalling it (a
    plain forward pass keeps about one core of two busy; measured in the README)."""
    av = _import_av()
    slots: dict[int, list[int]] = defaultdict(list)  # pts -> indices (duplicate pts keep order)
    if info.pts is not None:
        for i, p in enumerate(info.pts):
            slots[p].append(i)
    start = info.pts[0] if info.pts is not None else 0
    times: dict[int, float] = {}
    results: dict[int, Future] = {}
    pending: deque[Future] = deque()
    damaged: dict[int, str] = {}
    error: str | None = None  # what failed, since the last key frame
    output = 0
    last_error = None
    container = _open(path)
    helper = ThreadPoolExecutor(1, thread_name_prefix="haic-frames")
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as e:
                error = error or f"{type(e).__name__}: {e}"
                last_error = error
                continue
            for frame in decoded:
                if frame.pts is not None and info.pts is not None:
                    if not slots.get(frame.pts):
                        continue  # a timestamp no presented packet has: not a frame of ours
                    i = slots[frame.pts].pop(0)
                    t = float((frame.pts - start) * info.time_base)
                else:
                    i, t = output, output / info.fps
                output += 1
                # With frame threads an error surfaces a few packets late, so every frame that
                # comes out after it is suspect, up to the next key frame.
                after_error = error is not None
                if after_error and frame.key_frame and not frame.is_corrupt:
                    error, after_error = None, False  # a key frame resets the references
                if i in wanted and i not in times:
                    if after_error or frame.is_corrupt:
                        why = error or "the decoder flagged it corrupt"
                        damaged[i] = why
                    times[i] = t
                    results[i] = helper.submit(_to_rgb_then, transform, frame, i)
                    pending.append(results[i])
                    while len(pending) > MAX_PENDING_FRAMES:
                        pending.popleft().result()
            if len(times) == len(wanted):
                break
        got = {i: (fut.result(), times[i]) for i, fut in results.items()}
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(path, f"decoding failed ({type(e).__name__}: {e})") from e
    finally:
        helper.shutdown(wait=True, cancel_futures=True)
        container.close()
    if damaged:
        i = min(damaged)
        raise VideoDecodeError(path, f"frame {i} depends on corrupt data ({damaged[i]})")
    missing = sorted(wanted - set(got))
    if missing:
        why = f": {last_error}" if last_error else ""
        raise VideoDecodeError(
            path, f"frame {missing[0]} could not be decoded ({output} frames came out{why})"
        )
    return got


def decode_frames(
    path: str | os.PathLike,
    indices: list[int] | tuple[int, ...],
    size: int | None = None,
    *,
    preprocess: str = "fast",
    autorotate: bool = True,
) -> torch.Tensor:
    """`read_frames`' frames only: uint8 ``[len(indices), H, W, 3]`` (``size=None``), or
    preprocessed to ``size`` as `read_frames` describes."""
    return read_frames(path, indices, size, preprocess=preprocess, autorotate=autorotate).frames


def load_video(
    path: str | os.PathLike,
    *,
    policy: str = "chat",
    max_frames: int = 24,
    size: int = 224,
    preprocess: str = "fast",
    autorotate: bool = True,
) -> tuple[torch.Tensor, FrameSelection]:
    """Probe, sample with ``policy`` and decode: the frames (``"fast"``: uint8 [F, size, size,
    3]; ``"release"``: float32 [F, 3, size, size]) and the selection, with the decoded frames'
    timestamps."""
    info = probe_video(path)
    selection = sample_frames(
        info.num_frames, info.fps, policy, max_frames=max_frames, timestamps=info.timestamps
    )
    out = read_frames(
        path, selection.indices, size, preprocess=preprocess, autorotate=autorotate, info=info
    )
    return out.frames, replace(selection, timestamps=out.timestamps)
