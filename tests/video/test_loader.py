"""VideoLoader: backends agree (indices exactly, pixels within test_dali's tolerance), bad files
become per-video error records while the rest of the batch comes out, sharding, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("av", reason="PyAV (the video extra) is not installed")

from haic_kernels.video import VideoLoader, shard_bounds, write_manifest
from haic_kernels.video.frames import resize_short_side_center_crop
from haic_kernels.video.synthetic import read_index

from ._clips import (
    DECODER_TOL_RESIZED,
    clip,
    has_encoder,
    pixel_stats,
    text_file,
    truncated_copy,
    vfr_clip,
    zero_frame_clip,
)

try:
    import nvidia.dali  # noqa: F401

    HAS_DALI = True
except ImportError:
    HAS_DALI = False
needs_dali = pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")
MEAN_TOL, P99_TOL = DECODER_TOL_RESIZED  # frames here are resized: measured in _clips.py
VFR_TIMES = [0.0, 0.1, 0.15, 0.6, 1.2, 1.25, 2.0, 2.05, 3.4]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("loader")
    out = {
        "vp9": clip(d, "vp9", num_frames=26, fps=8, width=96, height=64),  # 3.1 s
        "vp9_short": clip(d, "short", num_frames=10, fps=8, width=64, height=48),  # 1.1 s
        "mjpeg": clip(d, "mj", "mjpeg", num_frames=18, fps=6, width=80, height=48),
        "vfr": vfr_clip(d / "vfr.webm", VFR_TIMES),
        "text": text_file(d / "notes.mp4"),
        "zero": zero_frame_clip(d / "zero.webm"),
    }
    out["trunc"] = truncated_copy(out["vp9"], d / "trunc.webm", 0.5)
    if has_encoder("libx264"):
        out["h264"] = clip(d, "h264", "libx264", num_frames=20, fps=8, width=96, height=64)
    return out


def _frames_of(loader: VideoLoader) -> dict[str, tuple]:
    out = {}
    for batch in loader:
        for b, path in enumerate(batch.paths):
            out[Path(path).name] = (batch.indices[b], batch.video(b), batch.backends[b])
    return out


@needs_dali
@pytest.mark.parametrize("policy", ["chat", "uniform"])
def test_dali_cpu_and_pyav_give_the_same_frames(clips, policy: str) -> None:
    paths = [clips["vp9"], clips["mjpeg"], clips["vfr"]]
    kw = dict(policy=policy, num_frames=6, size=40, batch_size=3, device="cpu")
    dali = _frames_of(VideoLoader(paths, backend="dali", **kw))
    pyav = _frames_of(VideoLoader(paths, backend="pyav", **kw))
    auto = _frames_of(VideoLoader(paths, backend="auto", **kw))
    assert set(dali) == set(pyav) == set(auto) == {p.name for p in paths}
    for name in dali:
        assert dali[name][0] == pyav[name][0] == auto[name][0]
        # On the CPU auto uses PyAV (measured faster than DALI's CPU decoder, loader.py).
        assert dali[name][2] == "dali-cpu" and pyav[name][2] == auto[name][2] == "pyav"
        mean, p99, _ = pixel_stats(dali[name][1], pyav[name][1])
        assert mean <= MEAN_TOL and p99 <= P99_TOL, (name, mean, p99)


def test_pyav_h264_and_indices_match_the_pixels(clips) -> None:
    if "h264" not in clips:
        pytest.skip("this PyAV build has no libx264 encoder")
    (batch,) = list(VideoLoader([clips["h264"]], policy="uniform", num_frames=5, size=64,
                                device="cpu", backend="pyav"))  # fmt: skip
    assert batch.frames.shape == (1, 5, 64, 64, 3) and batch.frames.dtype == torch.uint8
    assert batch.indices[0] == (0, 4, 9, 14, 19)
    assert batch.timestamps[0] == pytest.approx([i / 8 for i in (0, 4, 9, 14, 19)])
    # Uncropped decode of the same indices carries the index in its pixels.
    from haic_kernels.video import decode_frames

    full = decode_frames(clips["h264"], batch.indices[0])
    assert [read_index(f.numpy()) for f in full] == list(batch.indices[0])
    assert torch.equal(resize_short_side_center_crop(full, 64), batch.video(0))


def test_bad_inputs_are_error_records_and_the_rest_comes_out(clips) -> None:
    good = [clips["vp9"], clips["vp9_short"]]
    bad = {
        "missing": clips["vp9"].parent / "missing.webm",
        "trunc": clips["trunc"],
        "text": clips["text"],
        "zero": clips["zero"],
    }
    order = [good[0], bad["missing"], bad["trunc"], good[1], bad["text"], bad["zero"]]
    for backend in ("auto", "pyav", *(("dali",) * HAS_DALI)):
        batches = list(VideoLoader(order, num_frames=24, size=32, batch_size=6, device="cpu",
                                   backend=backend))  # fmt: skip
        assert len(batches) == 1
        (batch,) = batches
        assert batch.paths == [str(p) for p in good], backend
        errors = {Path(e.path).name: e.reason for e in batch.errors}
        assert set(errors) == {p.name for p in bad.values()}, backend
        assert "no such file" in errors["missing.webm"]
        assert "truncated" in errors["trunc.webm"]
        assert "not a readable video" in errors["notes.mp4"]
        assert errors["zero.webm"]
        assert all(e.to_dict()["error"] for e in batch.errors)


@needs_dali
def test_codec_the_backend_cannot_decode(clips) -> None:
    if "h264" not in clips:
        pytest.skip("this PyAV build has no libx264 encoder")
    paths = [clips["h264"], clips["vp9"]]
    (forced,) = list(VideoLoader(paths, size=32, device="cpu", backend="dali"))
    assert forced.paths == [str(clips["vp9"])]
    (err,) = forced.errors
    assert "codec h264" in err.reason and "DALI's CPU decoder" in err.reason
    (auto,) = list(VideoLoader(paths, size=32, device="cpu", backend="auto"))
    assert auto.backends == ["pyav", "pyav"] and not auto.errors  # auto on the CPU: PyAV


def test_short_videos_chat_pads_base_repeats(clips) -> None:
    paths = [clips["vp9"], clips["vp9_short"]]
    (chat,) = list(VideoLoader(paths, policy="chat", size=16, device="cpu", backend="pyav"))
    # 26 frames at 8 fps -> seconds 0..3 (4 frames); 10 frames -> seconds 0..1 (2 frames).
    assert chat.num_frames == [4, 2] and chat.frames.shape == (2, 4, 16, 16, 3)
    assert chat.indices == [(0, 8, 16, 24), (0, 8)]
    assert torch.equal(chat.frames[1, 2], chat.frames[1, 1])  # padded with the last frame
    assert torch.equal(chat.frames[1, 3], chat.frames[1, 1])
    (base,) = list(VideoLoader([clips["vp9_short"]], policy="base", num_frames=24, size=16,
                               device="cpu", backend="pyav"))  # fmt: skip
    assert base.num_frames == [24] and len(set(base.indices[0])) == 10  # repeats, as the policy


def test_variable_frame_rate_uses_container_times(clips) -> None:
    (batch,) = list(VideoLoader([clips["vfr"]], policy="chat", size=16, device="cpu"))
    # Closest frame to each whole second of [0.0, 0.1, 0.15, 0.6, 1.2, 1.25, 2.0, 2.05, 3.4]
    # (index/fps would put frame 8 at 0.8 s).
    assert batch.indices[0] == (0, 4, 6, 8)
    assert batch.timestamps[0] == pytest.approx((0.0, 1.2, 2.0, 3.4))


def test_manifest_source_shards_and_progress(clips, tmp_path: Path, capsys) -> None:
    names = ["vp9", "vp9_short", "mjpeg", "vfr", "text"]
    m = write_manifest(
        tmp_path / "m.jsonl",
        [{"path": str(clips[n]), "id": n, "question": f"q{n}"} for n in names],
    )
    seen = []
    for shard in range(2):
        loader = VideoLoader(m, size=16, batch_size=2, device="cpu", shard_id=shard,
                             num_shards=2, progress=True)  # fmt: skip
        assert len(loader) == len(loader.records) // 2 + len(loader.records) % 2
        for batch in loader:
            seen += [r.id for r in batch.records] + [e.record.id for e in batch.errors]
            assert all(r.question == f"q{r.id}" for r in batch.records)
    assert sorted(seen) == sorted(names)  # each video in exactly one shard
    assert "video" in capsys.readouterr().err  # the tqdm bar
    assert [shard_bounds(5, i, 2) for i in range(2)] == [(0, 2), (2, 5)]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"policy": "fast"}, "policy"),
        ({"num_frames": 0}, "num_frames"),
        ({"size": -1}, "size"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"backend": "ffmpeg"}, "backend"),
        ({"shard_id": 2, "num_shards": 2}, "shard_id"),
        ({"device": "cuda:0"} if not torch.cuda.is_available() else {"device": "tpu"}, "device"),
    ],
)
def test_arguments_are_checked(clips, kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VideoLoader([clips["vp9"]], **kw)
    with pytest.raises(TypeError, match="source"):
        VideoLoader([3.5])


@pytest.mark.gpu
@needs_dali
def test_dali_mixed_on_gpu_matches_pyav(clips) -> None:
    paths = [clips["vp9"], clips["mjpeg"], clips["vfr"], clips["text"]]
    if "h264" in clips:
        paths.append(clips["h264"])
    kw = dict(policy="uniform", num_frames=6, size=40, batch_size=5)
    gpu = _frames_of(VideoLoader(paths, backend="dali", device="cuda", **kw))
    cpu = _frames_of(VideoLoader(paths, backend="pyav", device="cpu", **kw))
    assert set(gpu) == set(cpu) == {p.name for p in paths if p != clips["text"]}
    for name, (idx, frames, backend) in gpu.items():
        assert backend == "dali-mixed" and frames.device.type == "cuda"
        assert idx == cpu[name][0]
        mean, p99, _ = pixel_stats(frames.cpu(), cpu[name][1])
        assert mean <= MEAN_TOL and p99 <= P99_TOL, (name, mean, p99)
