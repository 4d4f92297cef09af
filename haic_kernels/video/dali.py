"""NVIDIA DALI video decoding: NVDEC on a GPU ("mixed"), or DALI's CPU decoder (VP8/VP9/MJPEG).

One pipeline, built once and reused for every batch::

    encoded bytes (external_source, one uint8 array per file)  --+
    frame indices  (external_source, int32 per file)           --+--> fn.decoders.video(frames=...)

``fn.decoders.video`` decodes the videos of a batch in parallel and, given ``frames``, only the
frames the sampling policy picked (it seeks to the key frame before each one using the index it
builds while opening the file). The file bytes are read in Python, which is what
``fn.readers.file`` does inside DALI: the reader was not used because after a failed batch a DALI
pipeline is invalid and must be rebuilt, and a reader cannot be restarted at the file that failed
or fed one file at a time for the retry; the per-sample ``frames`` must also follow the reader's
order exactly. Sharding (``shard_id``/``num_shards``) is applied by `VideoLoader` with DALI's
readers' rule, so both backends split a list the same way.

One bad file fails a whole DALI batch. `DaliVideoDecoder.decode` therefore returns one result per
file: on a failed batch it rebuilds the pipeline and decodes the files one at a time, so the good
ones still come out and each bad one gets a `VideoDecodeError` naming the file and the reason.

Outputs reach torch through DLPack without a copy: ``torch.from_dlpack`` passes torch's current
stream to DALI's ``__dlpack__``, which makes that stream wait for the decoder's work, so
consumers on the current stream (the resize in `VideoLoader`) are ordered after decoding. The
dynamic executor (DALI >= 2.0 default, asked for explicitly) keeps an output alive while a
tensor refers to it, so a later batch cannot overwrite it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .pyav import VideoDecodeError

#: Codecs (FFmpeg names, as `probe_video` reports them) each DALI backend decodes.
DALI_CPU_CODECS = frozenset({"vp8", "vp9", "mjpeg"})
DALI_MIXED_CODECS = frozenset({"h264", "hevc", "av1", "vp8", "vp9", "mjpeg", "mpeg4"})

# Decoder threads per pipeline. The mixed decoder's CPU threads only demux and feed NVDEC; more
# than 4 did not help for a batch of 8-64 clips in DALI's own video examples.
_DEFAULT_THREADS = 4


def dali_codecs(device: str) -> frozenset[str]:
    """The codecs DALI decodes on ``device`` ("cpu": its CPU decoder; "cuda": NVDEC)."""
    return DALI_CPU_CODECS if device == "cpu" else DALI_MIXED_CODECS


def _import_dali():
    try:
        from nvidia import dali
        from nvidia.dali import fn, types
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "NVIDIA DALI is not installed; install the video extra: pip install "
            "'haic_kernels[video]' (or nvidia-dali-cuda120 / -cuda130)"
        ) from e
    return dali, fn, types


class DaliVideoDecoder:
    """Decode chosen frames of many files with one DALI pipeline.

    Args:
        device: ``"cuda"`` (NVDEC through DALI's "mixed" decoder, output on the GPU) or ``"cpu"``
            (DALI's CPU decoder: VP8, VP9 and MJPEG only).
        batch_size: the most files per `decode` call (the pipeline's batch size).
        num_threads: DALI CPU threads (default 4, at most the CPU count).
        device_id: the CUDA device for ``"cuda"`` (default: torch's current device).
    """

    def __init__(
        self,
        device: str = "cuda",
        *,
        batch_size: int = 8,
        num_threads: int | None = None,
        device_id: int | None = None,
    ) -> None:
        if device not in ("cuda", "cpu"):
            raise ValueError(f"device must be 'cuda' or 'cpu', got {device!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if num_threads is None:
            num_threads = min(_DEFAULT_THREADS, os.cpu_count() or 1)
        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        _import_dali()
        if device == "cuda":
            if not torch.cuda.is_available():
                raise ValueError("device='cuda' but torch sees no CUDA device")
            if device_id is None:
                device_id = torch.cuda.current_device()
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self.device_id = device_id if device == "cuda" else None
        self.codecs = dali_codecs(device)
        self._pipe = None

    def _build(self):
        dali, fn, types = _import_dali()
        pipe = dali.Pipeline(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self.device_id,
            # One batch in flight: each batch is fed right before it runs, and a failure must
            # not leave a second, already-fed batch behind in a pipeline that is then invalid.
            prefetch_queue_depth=1,
            exec_dynamic=True,
        )
        with pipe:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
            kwargs = {"affine": False} if self.device == "cuda" else {}  # don't pin our threads
            video = fn.decoders.video(
                encoded,
                device="mixed" if self.device == "cuda" else "cpu",
                frames=frames,
                pad_mode="none",
                **kwargs,
            )
            pipe.set_outputs(video)
        pipe.build()
        return pipe

    def _run(self, data: list[np.ndarray], indices: list[Sequence[int]]) -> list[torch.Tensor]:
        if self._pipe is None:
            self._pipe = self._build()
        pipe = self._pipe
        try:
            pipe.feed_input("encoded", data)
            pipe.feed_input("frames", [np.asarray(ix, dtype=np.int32) for ix in indices])
            (out,) = pipe.run()
        except Exception:
            # DALI marks a pipeline invalid after an error in a run: start over with a new one.
            self._pipe = None
            del pipe
            raise
        return [torch.from_dlpack(out[i]) for i in range(len(data))]

    def decode(
        self, items: Sequence[tuple[str | os.PathLike, Sequence[int]]]
    ) -> list[torch.Tensor | VideoDecodeError]:
        """Decode ``(path, frame indices)`` pairs -> per item uint8 [len(indices), H, W, 3] on
        the decoder's device, or the `VideoDecodeError` that item raised.

        Indices are in presentation order; repeats repeat frames. An index past the frames DALI
        finds is an error for that file (``pad_mode="none"``: DALI's default would pad with black
        frames silently). Never raises for a bad file.
        """
        results: list[torch.Tensor | VideoDecodeError | None] = [None] * len(items)
        todo: list[tuple[int, np.ndarray, list[int]]] = []
        for k, (path, indices) in enumerate(items):
            ix = [int(i) for i in indices]
            if not ix or min(ix) < 0:
                results[k] = VideoDecodeError(path, f"bad frame indices {ix[:4]}")
                continue
            try:
                data = np.fromfile(os.fspath(path), dtype=np.uint8)
            except OSError as e:
                results[k] = VideoDecodeError(path, f"cannot read the file ({e.strerror or e})")
                continue
            if data.size == 0:
                results[k] = VideoDecodeError(path, "empty file")
                continue
            todo.append((k, data, ix))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            try:
                outs = self._run([d for _, d, _ in chunk], [ix for _, _, ix in chunk])
            except Exception:
                outs = None
            if outs is not None:
                for (k, _, ix), out in zip(chunk, outs):
                    results[k] = self._checked(items[k][0], out, ix)
                continue
            for k, data, ix in chunk:  # the batch failed: find which files, keep the others
                try:
                    (out,) = self._run([data], [ix])
                    results[k] = self._checked(items[k][0], out, ix)
                except Exception as e:
                    results[k] = VideoDecodeError(items[k][0], _reason(e, self.device))
        return results  # type: ignore[return-value]

    @staticmethod
    def _checked(
        path: str | os.PathLike, out: torch.Tensor, ix: list[int]
    ) -> torch.Tensor | VideoDecodeError:
        if out.ndim != 4 or out.shape[0] != len(ix) or out.shape[-1] != 3:
            return VideoDecodeError(
                path, f"DALI returned shape {tuple(out.shape)} for {len(ix)} frames"
            )
        return out


def _reason(exc: BaseException, device: str) -> str:
    """A one-line reason from a DALI error (its messages carry a long pipeline traceback)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # DALI's own cause is the last line that is not traceback boilerplate.
    skip = ("File ", "Critical error", "Error in ", "which was used", "encountered", "C++ context")
    useful = [ln for ln in lines if not ln.startswith(skip) and "pipeline" not in ln.lower()]
    useful = [ln for ln in useful if not ln.startswith(("video = ", "return "))]
    cause = useful[-1] if useful else (lines[-1] if lines else type(exc).__name__)
    backend = "DALI mixed (NVDEC)" if device == "cuda" else "DALI CPU"
    return f"{backend} decoding failed: {cause[:300]}"
