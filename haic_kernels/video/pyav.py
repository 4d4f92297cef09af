"""CPU decoding with PyAV (FFmpeg): the fallback for any codec FFmpeg knows, without a GPU.

First version: probe a file once (frame count, rate, per-frame timestamps), then decode only the
frames a sampling policy picked, in one forward pass over the stream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .frames import resize_short_side_center_crop
from .sampling import FrameSelection, sample_frames


class VideoDecodeError(RuntimeError):
    """A video could not be read; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
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


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Frame count, rate and per-frame timestamps, read from packets (no pixel decoding)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        declared = _declared_duration(container, stream)
        times = []
        for packet in container.demux(stream):
            if packet.pts is not None and packet.size > 0:
                times.append(float(packet.pts * packet.time_base))
    except Exception as e:
        raise VideoDecodeError(path, f"corrupt stream ({type(e).__name__}: {e})") from e
    finally:
        container.close()
    if not times:
        raise VideoDecodeError(path, "the video stream has no frames")
    times.sort()  # packets come in decode order; frames are shown in presentation order
    start = times[0]
    ts = tuple(t - start for t in times)
    rate = stream.average_rate
    fps = float(rate) if rate else (len(ts) - 1) / max(ts[-1], 1e-9) if len(ts) > 1 else 1.0
    duration = ts[-1] + 1.0 / fps
    # A cut-off file still demuxes cleanly up to the cut; its header still gives the full length.
    if declared is not None and duration < declared - max(2.0 / fps + 0.05, 0.05 * declared):
        raise VideoDecodeError(
            path,
            f"truncated: frames end at {duration:.2f} s but the header says {declared:.2f} s "
            f"({len(ts)} frames found)",
        )
    ctx = stream.codec_context
    return VideoInfo(
        path=str(path),
        num_frames=len(ts),
        fps=fps,
        duration=duration,
        width=ctx.width,
        height=ctx.height,
        codec=ctx.name,
        timestamps=ts,
        declared_duration=declared,
    )


def _declared_duration(container, stream) -> float | None:
    """The video stream's length from the header, or the container's when it holds only video
    (with audio, the container's length may be the audio's)."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0 and len(container.streams) == 1:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def decode_frames(
    path: str | os.PathLike, indices: list[int] | tuple[int, ...], size: int | None = None
) -> torch.Tensor:
    """Decode the frames at ``indices`` (presentation order) -> uint8 [len(indices), H, W, 3].

    ``size`` resizes the short side and center-crops to ``size`` x ``size``. Repeated indices
    repeat frames. Raises VideoDecodeError if the stream ends before the last index.
    """
    if len(indices) == 0:
        raise ValueError("indices must name at least one frame")
    if min(indices) < 0:
        raise ValueError(f"indices must be non-negative, got {min(indices)}")
    wanted = sorted(set(indices))
    container = _open(path)
    got: dict[int, np.ndarray] = {}
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        it = iter(wanted)
        target = next(it)
        for i, frame in enumerate(container.decode(stream)):
            if i == target:
                got[i] = frame.to_ndarray(format="rgb24")
                target = next(it, None)
                if target is None:
                    break
    except VideoDecodeError:
        raise
    except Exception as e:
        raise VideoDecodeError(path, f"decoding failed ({type(e).__name__}: {e})") from e
    finally:
        container.close()
    missing = [i for i in wanted if i not in got]
    if missing:
        raise VideoDecodeError(path, f"stream ended before frame {missing[0]} ({len(got)} decoded)")
    frames = torch.from_numpy(np.stack([got[i] for i in indices]))
    return resize_short_side_center_crop(frames, size) if size is not None else frames


def load_video(
    path: str | os.PathLike, *, policy: str = "chat", max_frames: int = 24, size: int = 224
) -> tuple[torch.Tensor, FrameSelection]:
    """Probe, sample with ``policy`` and decode: uint8 [F, size, size, 3] and the selection."""
    info = probe_video(path)
    selection = sample_frames(
        info.num_frames, info.fps, policy, max_frames=max_frames, timestamps=info.timestamps
    )
    return decode_frames(path, selection.indices, size), selection
