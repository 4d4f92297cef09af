"""PyAV decoding on clips the test writes, whose frame index is readable from the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av", reason="PyAV (the video extra) is not installed")

from haic_kernels.video import (  # noqa: E402
    VideoDecodeError,
    decode_frames,
    load_video,
    preprocess_frames,
    probe_video,
)
from haic_kernels.video.synthetic import read_index, write_clip  # noqa: E402

CODECS = ["libvpx-vp9", "libx264", "mjpeg"]


@pytest.fixture(scope="module", params=CODECS)
def clip(request, tmp_path_factory) -> Path:
    ext = {"libvpx-vp9": "webm", "libx264": "mp4", "mjpeg": "avi"}[request.param]
    path = tmp_path_factory.mktemp("clips") / f"clip.{ext}"
    opts = {"cpu-used": "8", "deadline": "realtime"} if request.param == "libvpx-vp9" else None
    return Path(
        write_clip(path, 37, fps=12, width=80, height=48, codec=request.param, options=opts)
    )


def test_probe(clip: Path) -> None:
    info = probe_video(clip)
    assert info.num_frames == 37
    assert info.fps == pytest.approx(12.0)
    assert (info.width, info.height) == (80, 48)
    assert info.timestamps[0] == 0.0
    assert info.timestamps == tuple(sorted(info.timestamps))


def test_decode_picks_the_asked_frames(clip: Path) -> None:
    indices = [36, 0, 5, 5, 17]
    frames = decode_frames(clip, indices)
    assert frames.dtype == torch.uint8 and frames.shape == (5, 48, 80, 3)
    assert [read_index(f.numpy()) for f in frames] == indices


@pytest.mark.parametrize("mode", ["fast", "release"])
def test_frames_preprocessed_while_decoding_are_the_full_frames_preprocessed(
    clip: Path, mode: str
) -> None:
    """Each wanted frame is preprocessed on the helper thread as it is decoded; in any order,
    with repeats, it is the full-resolution frame put through `preprocess_frames`."""
    for indices in ([0, 5, 17, 36], [36, 0, 5, 5, 17]):
        full = decode_frames(clip, indices)
        got = decode_frames(clip, indices, 32, preprocess=mode)
        assert torch.equal(got, preprocess_frames(full, 32, mode))


def test_a_failing_preprocess_is_an_error_naming_the_file(clip: Path, monkeypatch) -> None:
    import threading

    from haic_kernels.video import frames as frames_mod

    def broken(self, frame, out):
        raise MemoryError("no room")

    before = threading.active_count()
    monkeypatch.setattr(frames_mod.Resizer, "__call__", broken)
    with pytest.raises(VideoDecodeError, match=rf"{clip.name}: decoding failed.*no room"):
        decode_frames(clip, [0, 20], 32)
    assert threading.active_count() == before  # the helper thread is gone


def test_load_video_chat_policy(clip: Path) -> None:
    frames, sel = load_video(clip, policy="chat", size=32)
    # 37 frames at 12 fps: last at 3.0 s -> seconds 0..3 -> frames 0, 12, 24, 36.
    assert list(sel.indices) == [0, 12, 24, 36]
    assert frames.shape == (4, 32, 32, 3)


def test_past_the_end_is_an_error_naming_the_file(clip: Path) -> None:
    with pytest.raises(VideoDecodeError, match=str(clip.name)):
        decode_frames(clip, [0, 37])


def test_bad_files(tmp_path: Path, clip: Path) -> None:
    with pytest.raises(VideoDecodeError, match="no such file"):
        probe_video(tmp_path / "missing.webm")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match=r"junk\.mp4"):
        probe_video(junk)
