"""`VideoLoader`: batches of sampled, preprocessed frames from a list of videos or a manifest.

For each video: probe it once with PyAV (frame count, every frame's presentation time and the
display matrix, from packets and the first frame), choose frames with the sampling policy,
decode only those, orient them as the display matrix says, resize the short side to ``size``
and center-crop (`frames.preprocess_frames`, ``preprocess="fast"`` uint8 or ``"release"``
normalized float32), then stack the batch on ``device``.

Backends (``backend="auto"`` picks per video, from the probed codec):

=================  ==============================  =========================================
device             codec                           decoder
=================  ==============================  =========================================
cuda               h264, hevc, av1, vp8/9, mjpeg   DALI "mixed" (NVDEC), resize on the GPU
cpu or cuda        anything else FFmpeg reads      PyAV (CPU threads), then copied to device
=================  ==============================  =========================================

On the CPU ``auto`` uses PyAV for every codec: DALI's CPU decoder was measured slower on this
2-core machine (`CPU_AUTO_PREFERS_DALI`). ``backend="dali"`` or ``"pyav"`` forces one; a video
the forced backend cannot decode becomes an error record, never a silent switch.

Frame timing: a frame index is the frame with that rank among the presented timestamps (decord's
and DALI's rule, edit-list preroll excluded); PyAV reports each frame's own decoded timestamp,
DALI the probed one (the same number for the same index).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .frames import Orientation, check_mode, preprocess_frames
from .manifest import ManifestRecord, parse_record, read_manifest
from .pyav import DecodedFrames, VideoDecodeError, VideoInfo, probe_video, read_frames
from .sampling import POLICIES, FrameSelection, sample_frames

BACKENDS = ("auto", "dali", "pyav")
MANIFEST_SUFFIXES = (".jsonl", ".ndjson")

#: Whether ``backend="auto"`` on a CPU device sends VP8/VP9/MJPEG to DALI's CPU decoder.
#: Measured with ``benchmarks/bench_video_cpu.py`` (README "Video input"), 2-core machine,
#: DALI 2.4.0 vs PyAV 18.1 (FFmpeg 8), 24 frames per clip: see the README table for the numbers.
CPU_AUTO_PREFERS_DALI = False


@dataclass(frozen=True)
class VideoError:
    """A video that did not come out: its path, why, and its manifest record."""

    path: str
    reason: str
    record: ManifestRecord

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.record.id, "path": self.path, "error": self.reason}


@dataclass
class VideoBatch:
    """The videos of one batch that decoded, and error records for those that did not.

    ``frames``: on the loader's device, ``preprocess="fast"``: uint8 [B, F, size, size, 3] RGB,
    not normalized; ``"release"``: float32 [B, F, 3, size, size], CLIP-normalized. F is the most
    frames any video of the batch has; a video with fewer (the ``chat`` policy gives one frame per
    second of video, so short clips have fewer than ``num_frames``) is padded by repeating its
    last frame, and ``num_frames[b]`` says how many are real: use ``batch.video(b)`` for exactly
    those. ``indices[b]`` / ``timestamps[b]`` (seconds from the first frame) describe the real
    frames; ``backends[b]`` names the decoder used; ``rotations[b]`` the display rotation applied
    (degrees counter-clockwise, FFmpeg's sign; 0 when none or ``autorotate=False``).
    """

    frames: torch.Tensor
    num_frames: list[int]
    indices: list[tuple[int, ...]]
    timestamps: list[tuple[float, ...]]
    paths: list[str]
    records: list[ManifestRecord]
    backends: list[str]
    errors: list[VideoError] = field(default_factory=list)
    rotations: list[int] = field(default_factory=list)
    preprocess: str = "fast"

    def __len__(self) -> int:
        return len(self.paths)

    def video(self, b: int) -> torch.Tensor:
        """Video ``b`` without padding (a view): uint8 [num_frames[b], size, size, 3] ("fast")
        or float32 [num_frames[b], 3, size, size] ("release")."""
        return self.frames[b, : self.num_frames[b]]


def shard_bounds(n: int, shard_id: int, num_shards: int) -> tuple[int, int]:
    """[start, end) of shard ``shard_id`` of ``n`` items: DALI readers' rule, contiguous runs
    of floor(n * i / num_shards) so the sizes differ by at most one."""
    return n * shard_id // num_shards, n * (shard_id + 1) // num_shards


def _to_records(source: Any) -> list[ManifestRecord]:
    if isinstance(source, (str, os.PathLike)):
        if Path(source).suffix.lower() in MANIFEST_SUFFIXES:
            return read_manifest(source)
        source = [source]
    if not isinstance(source, Sequence) or isinstance(source, (str, bytes)):
        raise TypeError(
            "source must be a manifest path (.jsonl), a video path, or a list of paths / "
            f"ManifestRecord / dicts, got {type(source).__name__}"
        )
    out = []
    for i, item in enumerate(source):
        if isinstance(item, ManifestRecord):
            out.append(item)
        elif isinstance(item, (str, os.PathLike)):
            out.append(ManifestRecord(path=str(Path(item).absolute())))
        elif isinstance(item, dict):
            out.append(parse_record(item, Path.cwd(), f"source[{i}]"))
        else:
            raise TypeError(
                f"source[{i}] must be a path, ManifestRecord or dict, got {type(item).__name__}"
            )
    return out


def _dali_indices(sel: FrameSelection, info: VideoInfo) -> tuple[int, ...]:
    """DALI numbers frames in decoder output order; ask it for the frames our indices mean."""
    if info.output_position is None:
        return sel.indices
    return tuple(info.output_position[i] for i in sel.indices)


def _check_pos_int(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class VideoLoader:
    """Iterate `VideoBatch` es of sampled frames; see the module docstring for the backends.

    Args:
        source: a manifest path (``.jsonl``, see `read_manifest`), one video path, or a list of
            paths / `ManifestRecord` / manifest-style dicts.
        policy: ``"chat"``, ``"base"`` or ``"uniform"`` (`sample_frames`).
        num_frames: the most frames per video (24 for CogVLM2-Video).
        size: output frames are ``size`` x ``size`` (short side resized, center crop).
        batch_size: videos per batch, before failures are taken out.
        device: where frames go: ``"cuda"``, ``"cpu"`` or a torch.device; default cuda when
            available.
        backend: ``"auto"``, ``"dali"`` or ``"pyav"``.
        shard_id, num_shards: this process takes shard ``shard_id`` (DALI's rule, contiguous).
        progress: show a tqdm bar over the videos of this shard (on stderr).
        num_workers: threads for probing and PyAV decoding (default: CPU count, at most 16).
        preprocess: ``"fast"`` (uint8 frames, normalized later in the patch-embed kernel) or
            ``"release"`` (the release's normalize-then-resize, float32); see
            `preprocess_frames`.
        autorotate: apply the display matrix (phones' portrait videos), as ffmpeg and decord do.
    """

    def __init__(
        self,
        source: Any,
        *,
        policy: str = "chat",
        num_frames: int = 24,
        size: int = 224,
        batch_size: int = 8,
        device: str | torch.device | None = None,
        backend: str = "auto",
        shard_id: int = 0,
        num_shards: int = 1,
        progress: bool = False,
        num_workers: int | None = None,
        preprocess: str = "fast",
        autorotate: bool = True,
    ) -> None:
        self.preprocess = check_mode(preprocess)
        if not isinstance(autorotate, bool):
            raise ValueError(f"autorotate must be a bool, got {autorotate!r}")
        self.autorotate = autorotate
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.num_frames = _check_pos_int("num_frames", num_frames)
        self.size = _check_pos_int("size", size)
        self.batch_size = _check_pos_int("batch_size", batch_size)
        self.num_shards = _check_pos_int("num_shards", num_shards)
        if not isinstance(shard_id, int) or not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id must be an int in [0, {num_shards}), got {shard_id!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device: not a torch device: {device!r}") from e
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device}")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={str(device)!r} but torch sees no CUDA device")
        from .. import backends as _backends

        _backends.require("pyav")  # every backend probes files with PyAV
        if backend == "dali":
            _backends.require("dali")
        auto_dali = self.device.type == "cuda" or CPU_AUTO_PREFERS_DALI
        self.use_dali = backend == "dali" or (
            backend == "auto" and auto_dali and _backends.get("dali").usable
        )
        self.policy, self.backend, self.shard_id = policy, backend, shard_id
        self.progress = progress
        self.num_workers = num_workers or min(16, os.cpu_count() or 1)
        records = _to_records(source)
        start, end = shard_bounds(len(records), shard_id, num_shards)
        self.records = records[start:end]
        self._dali = None

    def __len__(self) -> int:
        """Batches in this shard."""
        return math.ceil(len(self.records) / self.batch_size)

    def __iter__(self) -> Iterator[VideoBatch]:
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(self.records), unit="video", desc="decode")
        n_errors = 0
        try:
            with ThreadPoolExecutor(self.num_workers) as pool:
                for start in range(0, len(self.records), self.batch_size):
                    recs = self.records[start : start + self.batch_size]
                    batch = self._load_batch(recs, pool)
                    if bar is not None:
                        n_errors += len(batch.errors)
                        bar.update(len(recs))
                        bar.set_postfix(errors=n_errors, refresh=False)
                    yield batch
        finally:
            if bar is not None:
                bar.close()

    def choose_backend(self, info: VideoInfo) -> str | VideoDecodeError:
        """``"dali"`` or ``"pyav"`` for a probed video, or the error if none may decode it."""
        from .dali import dali_codecs

        dali_ok = info.codec in dali_codecs(self.device.type)
        if self.backend == "pyav" or (self.backend == "auto" and not (self.use_dali and dali_ok)):
            return "pyav"
        if not dali_ok:
            where = "NVDEC" if self.device.type == "cuda" else "DALI's CPU decoder"
            codecs = ", ".join(sorted(dali_codecs(self.device.type)))
            return VideoDecodeError(
                info.path,
                f"codec {info.codec} cannot be decoded by {where} (it decodes {codecs}); "
                "use backend='auto' or 'pyav'",
            )
        return "dali"

    def _decoder(self):
        if self._dali is None:
            from .dali import DaliVideoDecoder

            index = self.device.index if self.device.type == "cuda" else None
            self._dali = DaliVideoDecoder(
                self.device.type, batch_size=self.batch_size, device_id=index
            )
        return self._dali

    def _plan(
        self, rec: ManifestRecord
    ) -> tuple[FrameSelection, str, VideoInfo] | VideoDecodeError:
        try:
            info = probe_video(rec.path)
        except VideoDecodeError as e:
            return e
        except Exception as e:  # a prober bug must not take the other videos down
            return VideoDecodeError(rec.path, f"probing failed ({type(e).__name__}: {e})")
        try:
            sel = sample_frames(
                info.num_frames,
                info.fps,
                self.policy,
                max_frames=self.num_frames,
                timestamps=info.timestamps,
            )
        except ValueError as e:
            return VideoDecodeError(rec.path, f"cannot sample frames ({e})")
        backend = self.choose_backend(info)
        return backend if isinstance(backend, VideoDecodeError) else (sel, backend, info)

    def _orientation(self, info: VideoInfo) -> Orientation:
        return info.orientation if self.autorotate else Orientation()

    def _pyav(
        self, rec: ManifestRecord, sel: FrameSelection, info: VideoInfo
    ) -> DecodedFrames | VideoDecodeError:
        try:
            return read_frames(rec.path, sel.indices, self.size, preprocess=self.preprocess,
                               autorotate=self.autorotate, info=info)  # fmt: skip
        except VideoDecodeError as e:
            return e
        except Exception as e:  # a decoder bug must not take the other videos down
            return VideoDecodeError(rec.path, f"PyAV decoding failed ({type(e).__name__}: {e})")

    def _load_batch(self, recs: list[ManifestRecord], pool: ThreadPoolExecutor) -> VideoBatch:
        plans = list(pool.map(self._plan, recs))
        results: list[DecodedFrames | VideoDecodeError | None] = [None] * len(recs)
        on_dali = [k for k, p in enumerate(plans) if isinstance(p, tuple) and p[1] == "dali"]
        futures = {
            k: pool.submit(self._pyav, recs[k], p[0], p[2])
            for k, p in enumerate(plans)
            if isinstance(p, tuple) and p[1] == "pyav"
        }
        if on_dali:  # decoded while the PyAV threads run
            items = [(recs[k].path, _dali_indices(*plans[k][::2])) for k in on_dali]  # type: ignore[misc]
            for k, out in zip(on_dali, self._decoder().decode(items)):
                results[k] = out
                if isinstance(out, torch.Tensor):
                    sel, _, info = plans[k]  # type: ignore[misc]
                    # Same preprocessing as the CPU path, on the tensor's device (the GPU for
                    # mixed); DALI ignores the display matrix, so it is applied here.
                    orientation = self._orientation(info)
                    out = preprocess_frames(out, self.size, self.preprocess,
                                            orientation=orientation)  # fmt: skip
                    results[k] = DecodedFrames(out, sel.indices, sel.timestamps, orientation)
        for k, fut in futures.items():
            results[k] = fut.result()
        for k, p in enumerate(plans):
            if isinstance(p, VideoDecodeError):
                results[k] = p
        return self._assemble(recs, plans, results)

    def _assemble(self, recs, plans, results) -> VideoBatch:
        good = [k for k, r in enumerate(results) if isinstance(r, DecodedFrames)]
        errors = [
            VideoError(rec.path, r.reason if isinstance(r, VideoDecodeError) else str(r), rec)
            for rec, r in zip(recs, results)
            if not isinstance(r, DecodedFrames)
        ]
        f_max = max((results[k].frames.shape[0] for k in good), default=0)
        padded = []
        for k in good:
            v = results[k].frames.to(self.device)
            if v.shape[0] < f_max:  # repeat the last frame (see VideoBatch)
                v = torch.cat([v, v[-1:].expand(f_max - v.shape[0], -1, -1, -1)])
            padded.append(v)
        if self.preprocess == "release":
            shape, dtype = (0, 0, 3, self.size, self.size), torch.float32
        else:
            shape, dtype = (0, 0, self.size, self.size, 3), torch.uint8
        frames = torch.stack(padded) if padded else torch.empty(shape, dtype=dtype)
        return VideoBatch(
            frames=frames.to(self.device),
            num_frames=[results[k].frames.shape[0] for k in good],
            indices=[results[k].indices for k in good],
            timestamps=[results[k].timestamps for k in good],
            paths=[recs[k].path for k in good],
            records=[recs[k] for k in good],
            backends=[self._label(plans[k][1]) for k in good],
            errors=errors,
            rotations=[results[k].orientation.rotation for k in good],
            preprocess=self.preprocess,
        )

    def _label(self, backend: str) -> str:
        if backend == "pyav":
            return "pyav"
        return "dali-mixed" if self.device.type == "cuda" else "dali-cpu"
