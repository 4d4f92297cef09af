"""The awkward-video corpus (conftest.py): what each backend yields for each file.

Every clip carries its source frame index in its pixels (`synthetic.read_index`), so a test can
say which picture came out, not only how many.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="PyAV (the video extra) is not installed")

from haic_kernels.video import VideoLoader, probe_video, read_frames
from haic_kernels.video.synthetic import read_index

from ._clips import DECODER_TOL_FULL, DECODER_TOL_RESIZED, need, pixel_stats, within

try:
    import nvidia.dali  # noqa: F401

    HAS_DALI = True
except ImportError:
    HAS_DALI = False
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")
CPU = dict(device="cpu", batch_size=4)


def _unturn(frame: np.ndarray, degrees: int, mirrored: bool = False) -> np.ndarray:
    """Undo a display turn so read_index sees the stored picture again."""
    if mirrored:
        frame = frame[:, ::-1]
    return np.rot90(frame, -degrees // 90)


@pytest.mark.parametrize("name,degrees", [("rot90", 90), ("rot270", 270), ("rot180", 180)])
def test_rotation_is_applied_like_ffmpeg(corpus, name: str, degrees: int) -> None:
    path = corpus[name]
    info = probe_video(path)
    assert info.rotation == degrees and (info.width, info.height) == (96, 64)
    shown = read_frames(path, [0, 7, 3]).frames
    stored = read_frames(path, [0, 7, 3], autorotate=False).frames
    assert stored.shape == (3, 64, 96, 3)
    assert shown.shape == ((3, 96, 64, 3) if degrees != 180 else (3, 64, 96, 3))
    # The display matrix turns the picture counter-clockwise by `degrees` (ffmpeg's transpose).
    expected = np.stack([np.rot90(f, degrees // 90) for f in stored.numpy()])
    assert np.array_equal(shown.numpy(), expected)
    assert [read_index(_unturn(f, degrees)) for f in shown.numpy()] == [0, 7, 3]


def test_mirrored_display_matrix(corpus) -> None:
    path = corpus["rot90_mirror"]
    stored = read_frames(path, [2], autorotate=False).frames[0].numpy()
    shown = read_frames(path, [2]).frames[0].numpy()
    assert np.array_equal(shown, np.rot90(stored, 1)[:, ::-1])  # turn, then mirror


def test_loader_records_rotation_and_can_turn_it_off(corpus) -> None:
    paths = [corpus["rot90"], corpus["vfr"]]
    (on,) = list(VideoLoader(paths, policy="uniform", num_frames=4, size=32, **CPU))
    (off,) = list(VideoLoader(paths, policy="uniform", num_frames=4, size=32, autorotate=False,
                              **CPU))  # fmt: skip
    assert on.rotations == [90, 0] and off.rotations == [0, 0]
    assert not torch.equal(on.video(0), off.video(0))
    assert torch.equal(on.video(1), off.video(1))
    with pytest.raises(ValueError, match="autorotate"):
        VideoLoader(paths, autorotate="yes")


@needs_dali
def test_dali_cpu_applies_rotation_too(corpus) -> None:
    path = corpus["rot90_vp9"]
    kw = dict(policy="uniform", num_frames=5, size=48, **CPU)
    (dali,) = list(VideoLoader([path], backend="dali", **kw))
    (pyav,) = list(VideoLoader([path], backend="pyav", **kw))
    assert dali.rotations == pyav.rotations == [90] and dali.backends == ["dali-cpu"]
    assert within(dali.video(0), pyav.video(0), DECODER_TOL_RESIZED)
    sideways = _frames_of_dali_unrotated(path)
    assert pixel_stats(sideways, dali.video(0))[0] > 20  # the turn did happen


def _frames_of_dali_unrotated(path: Path) -> torch.Tensor:
    kw = dict(policy="uniform", num_frames=5, size=48, autorotate=False, **CPU)
    (batch,) = list(VideoLoader([path], backend="dali", **kw))
    return batch.video(0)


@pytest.mark.parametrize("name", ["cut", "cut_vp9"])
def test_stream_copy_cut_counts_only_presented_frames(corpus, name: str) -> None:
    path = need(corpus, name)
    info = probe_video(path)
    assert info.num_frames == 21  # source frames 11..31; the preroll 8..10 is not shown
    assert info.timestamps == pytest.approx([k / 8 for k in range(21)])
    out = read_frames(path, list(range(21)))
    assert [read_index(f.numpy()) for f in out.frames] == list(range(11, 32))
    assert out.timestamps == pytest.approx([k / 8 for k in range(21)])
    (batch,) = list(VideoLoader([path], policy="uniform", num_frames=5, size=32, **CPU))
    assert batch.indices == [(0, 5, 10, 15, 20)] and not batch.errors


@needs_dali
def test_dali_reads_the_cut_the_same_way(corpus) -> None:
    path = corpus["cut_vp9"]
    from haic_kernels.video import DaliVideoDecoder

    (out,) = DaliVideoDecoder("cpu").decode([(path, [0, 10, 20])])
    assert [read_index(f.numpy()) for f in out] == [11, 21, 31]


@pytest.mark.parametrize("name", ["h264_raw", "hevc_raw"])
def test_raw_annex_b_streams_decode(corpus, name: str) -> None:
    path = need(corpus, name)
    info = probe_video(path)
    assert info.num_frames == 14 and info.fps == 8.0 and info.pts is None
    assert info.timestamps == pytest.approx([k / 8 for k in range(14)])
    (batch,) = list(VideoLoader([path], policy="chat", size=32, **CPU))
    # Last frame at 1.625 s rounds to 2: seconds 0, 1, 2 (the last clamps to frame 13).
    assert batch.indices == [(0, 8, 13)] and batch.timestamps == [pytest.approx((0, 1, 1.625))]
    full = read_frames(path, [13, 0, 6]).frames
    assert [read_index(f.numpy()) for f in full] == [13, 0, 6]


def test_timestamps_come_from_the_decoded_frames(corpus) -> None:
    """Packets 4 and 5 swap timestamps: frame index 4 is the picture shown at 0.5 s (source
    frame 5), as decord and a player have it, on PyAV and DALI alike."""
    path = corpus["swapped"]
    out = read_frames(path, [3, 4, 5, 6])
    assert [read_index(f.numpy()) for f in out.frames] == [3, 5, 4, 6]
    assert out.timestamps == pytest.approx([3 / 8, 4 / 8, 5 / 8, 6 / 8])
    if HAS_DALI:
        kw = dict(policy="uniform", num_frames=10, size=64, **CPU)
        (dali,) = list(VideoLoader([path], backend="dali", **kw))
        (pyav,) = list(VideoLoader([path], backend="pyav", **kw))
        assert dali.timestamps == pyav.timestamps
        # 96x64 -> 64: the short side is not shrunk, so the full-resolution tolerance applies.
        assert within(dali.video(0), pyav.video(0), DECODER_TOL_FULL)


def test_variable_frame_rate_indices_and_times(corpus) -> None:
    from .conftest import VFR_TIMES

    out = read_frames(corpus["vfr"], list(range(len(VFR_TIMES))))
    assert out.timestamps == pytest.approx(VFR_TIMES)
    assert [read_index(f.numpy()) for f in out.frames] == list(range(len(VFR_TIMES)))


def test_truncated_and_corrupt_files_are_error_records(corpus) -> None:
    good = corpus["vfr"]
    paths = [corpus["trunc"], good, *([corpus["corrupt"]] if "corrupt" in corpus else [])]
    (batch,) = list(VideoLoader(paths, policy="uniform", num_frames=40, size=32, **CPU))
    assert batch.paths == [str(good)]
    reasons = {Path(e.path).name: e.reason for e in batch.errors}
    assert "truncated" in reasons["trunc.webm"]
    if "corrupt" in corpus:
        assert "frame 1" in reasons["corrupt.mp4"], reasons  # 14..19: at or after the damage
        assert "corrupt" in reasons["corrupt.mp4"] or "could not be decoded" in reasons[
            "corrupt.mp4"]  # fmt: skip


def test_corruption_in_frames_nobody_wants_is_skipped(corpus) -> None:
    path = need(corpus, "corrupt")
    # Frames before the damage and from the next key frame (20) on decode as ffmpeg would.
    out = read_frames(path, [0, 9, 20, 39])
    assert [read_index(f.numpy()) for f in out.frames] == [0, 9, 20, 39]
    from haic_kernels.video import VideoDecodeError

    with pytest.raises(VideoDecodeError, match=r"frame 1[5-9]"):
        read_frames(path, [0, 17])


def test_probe_reads_nothing_after_closing(corpus, monkeypatch) -> None:
    """Stream attributes read after ``container.close()`` are freed memory (the fps that changed
    from call to call): every read must happen while the container is open."""
    import av

    real_open = av.open

    class Guard:
        def __init__(self, target, closed):
            self._target, self._closed = target, closed

        def __getattr__(self, name):
            if self._closed[0]:
                raise AssertionError(f"read {name!r} after the container was closed")
            value = getattr(self._target, name)
            return Guard(value, self._closed) if name in ("codec_context",) else value

    class GuardedContainer:
        def __init__(self, *a, **kw):
            self._c, self._closed = real_open(*a, **kw), [False]

        def close(self):
            self._closed[0] = True
            self._c.close()

        def demux(self, stream):
            return self._c.demux(stream._target)

        def decode(self, stream):
            return self._c.decode(stream._target)

        def __getattr__(self, name):
            value = getattr(self._c, name)
            if name == "streams":
                return _Streams(value, self._closed)
            return value

    class _Streams:
        def __init__(self, streams, closed):
            self._s, self._closed = streams, closed
            self.video = [Guard(v, closed) for v in streams.video]

        def __len__(self):
            return len(self._s)

    monkeypatch.setattr(av, "open", GuardedContainer)
    for name in ("vfr", "rot90"):
        info = probe_video(corpus[name])
        assert info.num_frames > 0
    monkeypatch.undo()
    infos = {(i.fps, i.duration, i.width, i.codec) for i in
             (probe_video(corpus["vfr"]) for _ in range(100))}  # fmt: skip
    assert len(infos) == 1
    with av.open(str(corpus["vfr"])) as c:
        assert infos.pop()[0] == float(c.streams.video[0].average_rate)


def test_damaged_inputs_never_crash_or_hang(corpus, tmp_path: Path) -> None:
    """Cuts at many points and noise over many spans, all through the loader in a child process
    (a crash fails this test instead of killing the run) with a time limit."""
    src = corpus["cut_vp9"]
    data = src.read_bytes()
    rng = np.random.default_rng(5)
    paths = []
    for k, frac in enumerate(np.linspace(0.05, 0.95, 7)):
        p = tmp_path / f"cut{k}.mp4"
        p.write_bytes(data[: int(len(data) * frac)])
        paths.append(p)
        q = tmp_path / f"noise{k}.mp4"
        bad = bytearray(data)
        at = int(len(data) * frac)
        span = len(bad[at : at + 200])
        bad[at : at + span] = rng.integers(0, 256, span, dtype=np.uint8).tobytes()
        q.write_bytes(bytes(bad))
        paths.append(q)
    code = (
        "import sys; from haic_kernels.video import VideoLoader\n"
        "n = 0\n"
        "for b in VideoLoader(sys.argv[1:], policy='uniform', num_frames=8, size=16,"
        " device='cpu', batch_size=5):\n"
        "    n += len(b) + len(b.errors)\n"
        "print(n)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.split()[-1]) == len(paths)  # every file: frames or an error record
