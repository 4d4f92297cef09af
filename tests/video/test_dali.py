"""DALI decoding: the CPU decoder on VP9/MJPEG here, NVDEC ("mixed") on a GPU.

Pixel tolerance between decoders (same file, same frame): measured in _clips.py
(`DECODER_TOL_FULL` at full resolution, as here).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="PyAV (the video extra) is not installed")
pytest.importorskip("nvidia.dali", reason="NVIDIA DALI (the video extra) is not installed")

from haic_kernels.video import DaliVideoDecoder, VideoDecodeError, decode_frames
from haic_kernels.video.synthetic import make_frame, read_index

from ._clips import DECODER_TOL_FULL, clip, has_encoder, pixel_stats, text_file, truncated_copy

MEAN_TOL, P99_TOL = DECODER_TOL_FULL


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dali")
    out = {
        "vp9": clip(d, "vp9", num_frames=20, fps=8, width=96, height=64),
        "vp9b": clip(d, "vp9b", num_frames=30, fps=10, width=80, height=48),
        "mjpeg": clip(d, "mj", "mjpeg", num_frames=12, fps=6, width=64, height=48),
        "text": text_file(d / "text.webm"),
    }
    out["trunc"] = truncated_copy(out["vp9"], d / "trunc.webm", 0.3)
    if has_encoder("libx264"):
        out["h264"] = clip(d, "h264", "libx264", num_frames=20, fps=8, width=96, height=64)
    return out


@pytest.mark.parametrize("name", ["vp9", "mjpeg"])
def test_cpu_decoder_picks_the_asked_frames_like_pyav(clips, name: str) -> None:
    path = clips[name]
    indices = [11, 0, 3, 3, 9]
    (out,) = DaliVideoDecoder("cpu", batch_size=2).decode([(path, indices)])
    assert isinstance(out, torch.Tensor), out
    assert out.dtype == torch.uint8 and out.device.type == "cpu" and out.ndim == 4
    assert [read_index(f.numpy()) for f in out] == indices
    ref = decode_frames(path, indices)
    assert out.shape == ref.shape
    mean, p99, _ = pixel_stats(out, ref)
    assert mean <= MEAN_TOL and p99 <= P99_TOL, (mean, p99)
    # Both decoders are about as far from the frames that were encoded.
    h, w = ref.shape[1:3]
    src = np.stack([make_frame(i, h, w) for i in indices])
    assert abs(pixel_stats(out, src)[0] - pixel_stats(ref, src)[0]) <= 1.0


def test_one_bad_file_does_not_lose_the_batch(clips) -> None:
    dec = DaliVideoDecoder("cpu", batch_size=8)
    items = [
        (clips["vp9"], [0, 19]),
        (clips["text"], [0]),
        (clips["trunc"], [0, 19]),  # past the cut: an error, not black padding
        (clips["vp9b"], [29, 2]),
        (clips["vp9"].parent / "missing.webm", [0]),
        (clips["vp9"], [-1]),
    ]
    if "h264" in clips:
        items.append((clips["h264"], [1]))  # NVDEC-only codec on the CPU decoder
    out = dec.decode(items)
    assert [read_index(f.numpy()) for f in out[0]] == [0, 19]
    assert [read_index(f.numpy()) for f in out[3]] == [29, 2]
    for k in (1, 2, 4, 5, *(6,) * ("h264" in clips)):
        assert isinstance(out[k], VideoDecodeError), (k, out[k])
        assert out[k].path == str(items[k][0]) and out[k].reason
    assert "no such file" in out[4].reason.lower() or "cannot read" in out[4].reason
    # The decoder still works after failed batches (its pipeline was rebuilt).
    (again,) = dec.decode([(clips["vp9b"], [5])])
    assert read_index(again[0].numpy()) == 5


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="device"):
        DaliVideoDecoder("tpu")
    with pytest.raises(ValueError, match="batch_size"):
        DaliVideoDecoder("cpu", batch_size=0)
    with pytest.raises(ValueError, match="num_threads"):
        DaliVideoDecoder("cpu", num_threads=0)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["vp9", "h264"])
def test_mixed_decoder_matches_pyav(clips, name: str) -> None:
    if name not in clips:
        pytest.skip("this PyAV build has no libx264 encoder")
    path = clips[name]
    indices = [0, 7, 7, 19, 3]
    dec = DaliVideoDecoder("cuda", batch_size=4)
    out, bad = dec.decode([(path, indices), (clips["text"], [0])])
    assert out.device.type == "cuda" and out.dtype == torch.uint8
    assert isinstance(bad, VideoDecodeError)
    torch.cuda.synchronize()
    cpu = out.cpu()
    assert [read_index(f.numpy()) for f in cpu] == indices
    mean, p99, _ = pixel_stats(cpu, decode_frames(path, indices))
    assert mean <= MEAN_TOL and p99 <= P99_TOL, (mean, p99)
