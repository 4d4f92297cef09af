"""video: decode + sample + resize of clip batches: DALI (GPU/CPU) vs a PyAV pool vs torchcodec.

Each call decodes one group of clips end to end, as `VideoLoader` does: probe (frame count and
times), ``uniform`` policy (24 frames, the issue's setting; 8 in tiny), decode only those frames,
resize short side + center crop to 224 (32 in tiny), uint8 [F, S, S, 3] per clip on the device.
Calls rotate over the groups, so repeated calls see different files.

Decoding is host-driven (file reads, demuxing, CPU threads or processes), so every case ends with
a device synchronize and its time is the wall time of a blocking call: on CUDA the harness's
events bracket that call (clock "cuda_events" = wall time here), on the CPU it is perf_counter.
Throughput: videos/s = shapes["videos"] / median s; frames/s = shapes["frames"] / median s.
``bytes`` counts the uint8 frames produced; ``flops`` is 0 (not a compute kernel).

Sizes: tiny = 4 VP9 clips of 3 s at 96x64 (CPU, seconds); full = 64 H.264 clips of 10-30 s at
24 fps, 480p and 1080p, generated once into $HAIC_BENCH_VIDEO_DIR (default: the temp dir), 16
clips per call. Full runs are long: use ``haic bench video --size full --reps 5 --warmup 1``.
Backends: "pyav pool" (baseline: one process per CPU core), "dali mixed" (NVDEC, CUDA only),
"dali cpu" (VP9 only, so tiny), "torchcodec" (if importable).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch

from haic_kernels.bench.runner import Case

SUITE = "video"

# (name, codec, clips, width, height, fps, seconds per clip (cycled), frames, size, per call)
SHAPES: dict[str, list[tuple[str, str, int, int, int, int, tuple[int, ...], int, int, int]]] = {
    "tiny": [("vp9-4x3s-96x64", "libvpx-vp9", 4, 96, 64, 8, (3,), 8, 32, 4)],
    "full": [
        (f"h264-64x10-30s-{h}p", "libx264", 64, w, h, 24, (10, 15, 20, 25, 30), 24, 224, 16)
        for w, h in ((854, 480), (1920, 1080))
    ],
}


# Workers are spawned, not forked: by the time a pool starts, this process runs threads (torch's
# pools, DALI's, the tqdm monitor), and a forked child can inherit one of their locks held and
# hang forever (seen: the benchmark smoke run stuck in the PyAV pool).
_SPAWN = multiprocessing.get_context("spawn")


def _fast_clip(args: tuple[str, str, int, int, int, int]) -> str:
    """Encode one synthetic clip quickly: a rolled gradient (no per-frame trigonometry)."""
    import av
    import numpy as np

    path, codec, width, height, fps, frames = args
    if os.path.exists(path):
        return path
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], -1).astype(np.uint8)
    tmp = path + ".part"
    with av.open(tmp, mode="w", format="mp4" if codec == "libx264" else "webm") as c:
        s = c.add_stream(codec, rate=Fraction(fps))
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        # Speed over quality: the benchmark measures decoding, any valid stream will do.
        fast = {"preset": "ultrafast"} if codec == "libx264" else {"cpu-used": "8"}
        s.options = fast if codec == "libx264" else {**fast, "deadline": "realtime"}
        for i in range(frames):
            img = np.roll(base, 4 * i, axis=1)
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    os.replace(tmp, path)
    return path


def make_clips(name: str, codec: str, n: int, w: int, h: int, fps: int, secs: tuple[int, ...]):
    """The suite's clips (written on first use, in parallel), as a list of paths."""
    root = Path(os.environ.get("HAIC_BENCH_VIDEO_DIR", Path(tempfile.gettempdir()) / "haic_video"))
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    ext = "mp4" if codec == "libx264" else "webm"
    jobs = [
        (str(folder / f"clip{i:03d}.{ext}"), codec, w, h, fps, fps * secs[i % len(secs)])
        for i in range(n)
    ]
    if all(os.path.exists(j[0]) for j in jobs):
        return [j[0] for j in jobs]
    with ProcessPoolExecutor(min(n, os.cpu_count() or 1), mp_context=_SPAWN) as pool:
        return list(pool.map(_fast_clip, jobs))


def _pyav_one(args: tuple[str, int, int]):
    from haic_kernels.video.pyav import load_video

    path, frames, size = args
    return load_video(path, policy="uniform", max_frames=frames, size=size)[0].numpy()


_pool: ProcessPoolExecutor | None = None


def _pyav_pool(paths: list[str], frames: int, size: int, device: torch.device):
    global _pool
    if _pool is None:
        _pool = ProcessPoolExecutor(os.cpu_count() or 1, mp_context=_SPAWN)
    outs = _pool.map(_pyav_one, [(p, frames, size) for p in paths])
    return [torch.from_numpy(o).to(device) for o in outs]


def _dali(paths: list[str], frames: int, size: int, device: torch.device):
    from haic_kernels.video.loader import VideoLoader

    loader = VideoLoader(paths, policy="uniform", num_frames=frames, size=size,
                         batch_size=len(paths), device=device, backend="dali")  # fmt: skip
    out = []
    for batch in loader:
        if batch.errors:
            raise RuntimeError(f"DALI failed on {batch.errors[0].path}: {batch.errors[0].reason}")
        out += [batch.video(b) for b in range(len(batch))]
    return out


def _torchcodec(paths: list[str], frames: int, size: int, device: torch.device):
    from torchcodec.decoders import VideoDecoder

    from haic_kernels.video.frames import resize_short_side_center_crop
    from haic_kernels.video.pyav import probe_video
    from haic_kernels.video.sampling import sample_frames

    out = []
    for p in paths:
        info = probe_video(p)
        sel = sample_frames(info.num_frames, info.fps, "uniform", max_frames=frames,
                            timestamps=info.timestamps)  # fmt: skip
        dec = VideoDecoder(p, device=str(device))
        batch = dec.get_frames_at(list(sel.indices)).data  # [F, 3, H, W] uint8
        out.append(resize_short_side_center_crop(batch.permute(0, 2, 3, 1).contiguous(), size))
    return out


def _rotating(fn: Callable, groups: list[list[str]], frames: int, size: int, device):
    cycle = itertools.cycle(groups)

    def call() -> list[torch.Tensor]:
        out = fn(next(cycle), frames, size, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return call


def _lazy(fn: Callable, spec: tuple, frames: int, side: int, per_call: int, device):
    """A case function that makes the clips on its first call, not when cases are listed."""
    state: list[Callable | None] = [None]

    def call(*_: Any) -> list[torch.Tensor]:
        if state[0] is None:
            paths = make_clips(*spec)
            groups = [paths[i : i + per_call] for i in range(0, len(paths), per_call)]
            state[0] = _rotating(fn, groups, frames, side, device)
        return state[0]()

    return call


def _check(n: int, frames: int, size: int) -> Callable[[Any, tuple[Any, ...]], None]:
    def check(out: Any, _inputs: tuple[Any, ...]) -> None:
        if len(out) != n or any(tuple(o.shape) != (frames, size, size, 3) for o in out):
            got = [tuple(o.shape) for o in out]
            raise AssertionError(f"expected {n} x {(frames, size, size, 3)}, got {got}")

    return check


def _skip(backend: str, codec: str, device: torch.device) -> str | None:
    from haic_kernels import backends

    if backend.startswith("dali") and not backends.get("dali").available:
        return backends.get("dali").reason
    if backend == "dali mixed" and device.type != "cuda":
        return "DALI mixed (NVDEC) needs a CUDA device"
    if backend == "dali cpu" and codec not in ("libvpx-vp9", "libvpx", "mjpeg"):
        return "DALI's CPU decoder does not decode H.264"
    if backend == "torchcodec":
        import importlib.util

        if importlib.util.find_spec("torchcodec") is None:
            return "torchcodec is not installed"
    return None


def cases(size: str, device: torch.device) -> list[Case]:
    """PyAV pool (baseline), DALI mixed, DALI cpu, torchcodec, for every shape of ``size``."""
    if size not in SHAPES:
        raise ValueError(f"size: expected one of {sorted(SHAPES)}, got {size!r}")
    device = torch.device(device)
    fns = {"pyav pool": _pyav_pool, "dali mixed": _dali, "dali cpu": _dali,
           "torchcodec": _torchcodec}  # fmt: skip
    out = []
    for name, codec, n, w, h, fps, secs, frames, side, per_call in SHAPES[size]:
        shapes = {"videos": per_call, "frames": per_call * frames, "H": h, "W": w, "size": side}
        for backend, fn in fns.items():
            skip = _skip(backend, codec, device)
            # dali cpu on a CUDA machine still decodes to the CPU, then copies.
            dev = torch.device("cpu") if backend == "dali cpu" else device
            spec = (name, codec, n, w, h, fps, secs)
            call = None if skip else _lazy(fn, spec, frames, side, per_call, dev)
            out.append(
                Case(
                    suite=SUITE,
                    name=name,
                    backend=backend,
                    shapes=shapes,
                    dtype="uint8",
                    flops=0,
                    bytes=per_call * frames * side * side * 3,
                    make_inputs=lambda _d: (),
                    fn=call or (lambda *_: None),
                    baseline=backend == "pyav pool",
                    skip_reason=skip,
                    check=_check(per_call, frames, side),
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# CPU measurements (benchmarks/bench_video_cpu.py): PyAV's read path against a plain forward
# pass and the ffmpeg CLI, and DALI's CPU decoder against PyAV (speed and pixels).
# ---------------------------------------------------------------------------------------------


#: What `measure_variant` can run. "plain forward pass" and the PyAV readers decode with the
#: same settings (``thread_type="AUTO"``, FFmpeg's default thread count), from the same probed
#: indices, and stop after the last wanted frame; the probe is not timed.
VARIANTS = ("plain forward pass", "pyav read_frames", "pyav read_frames release", "ffmpeg cli",
            "dali cpu")  # fmt: skip


def plain_forward_pass(path: str, indices: list[int]) -> list[Any]:
    """The least any PyAV reader does: decode every frame up to the last wanted one and convert
    the wanted ones to RGB (``frame.to_ndarray("rgb24")``), no resize."""
    import av

    wanted, out = set(indices), []
    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(c.decode(stream)):
            if i in wanted:
                out.append(frame.to_ndarray(format="rgb24"))
            if i >= max(indices):
                break
    return out


def ffmpeg_cli(path: str, indices: list[int], size: int) -> tuple[bytes, float] | None:
    """``ffmpeg`` selecting the frames, scaling the short side (swscale bilinear) and cropping,
    stopping after the last selected frame, its own default threads: (the rgb24 frames, the
    ffmpeg process's peak RSS in MiB), or None when ffmpeg is not on PATH.

    ffmpeg runs under ``sh`` and reports its own peak (``-benchmark``): a child started straight
    from Python would count this interpreter's pages, which it holds until it execs."""
    import re
    import shutil
    import subprocess

    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    wanted = sorted(set(indices))
    select = "+".join(f"eq(n\\,{i})" for i in wanted)
    vf = (f"select='{select}',scale='if(gt(iw,ih),-2,{size})':'if(gt(iw,ih),{size},-2)'"
          f":flags=bilinear,crop={size}:{size}")  # fmt: skip
    cmd = ["sh", "-c", '"$0" "$@"; s=$?; exit $s', exe, "-hide_banner", "-nostats",
           "-loglevel", "info", "-benchmark", "-i", path, "-vf", vf, "-vsync", "0",
           "-frames:v", str(len(wanted)), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]  # fmt: skip
    run = subprocess.run(cmd, check=True, capture_output=True)
    found = re.search(rb"maxrss=(\d+)kB", run.stderr)
    return run.stdout, (int(found.group(1)) / 1024 if found else float("nan"))


def _variant(name: str, path: str, frames: int, size: int) -> None:
    """Run one variant in this (child) process; print wall and CPU seconds and memory as JSON.

    ``extra_mib`` is the peak RSS of the work above the RSS before it (for "ffmpeg cli": the
    ffmpeg process's own peak RSS, all of it the work's). ``cpu_s`` counts this process and its
    children (ffmpeg)."""
    import json
    import resource
    import time

    from haic_kernels.video.pyav import probe_video, read_frames
    from haic_kernels.video.sampling import sample_frames

    def rss_mib(field: str) -> float:
        with open("/proc/self/status") as f:
            kb = next(int(ln.split()[1]) for ln in f if ln.startswith(field))
        return kb / 1024

    def cpu_s() -> float:
        own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                      resource.RUSAGE_CHILDREN))  # fmt: skip
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    info = probe_video(path)
    idx = list(sample_frames(info.num_frames, info.fps, "uniform", max_frames=frames,
                             timestamps=info.timestamps).indices)  # fmt: skip
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS: the peak of the work alone
    base = rss_mib("VmRSS:")
    c0, t0 = cpu_s(), time.perf_counter()
    if name == "pyav read_frames":
        read_frames(path, idx, size, info=info)
    elif name == "pyav read_frames release":
        read_frames(path, idx, size, preprocess="release", info=info)
    elif name == "plain forward pass":
        plain_forward_pass(path, idx)
    elif name == "ffmpeg cli":
        got = ffmpeg_cli(path, idx, size)
        if got is None:
            raise RuntimeError("ffmpeg is not on PATH")
        ffmpeg_peak = got[1]
    elif name == "dali cpu":
        from haic_kernels.video.dali import DaliVideoDecoder
        from haic_kernels.video.frames import preprocess_frames

        (out,) = DaliVideoDecoder("cpu", batch_size=1).decode([(path, idx)])
        if not isinstance(out, torch.Tensor):
            raise RuntimeError(str(out))
        preprocess_frames(out, size)
    else:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {name!r}")
    seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
    peak = rss_mib("VmHWM:")
    extra = peak - base
    if name == "ffmpeg cli":
        peak = extra = ffmpeg_peak
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_mib": peak, "extra_mib": extra}))


def measure_variant(name: str, path: str, frames: int = 24, size: int = 224) -> dict[str, float]:
    """`_variant` in a fresh interpreter (so peak memory is its own)."""
    import json
    import subprocess
    import sys

    code = f"from haic_kernels.bench.suites.video import _variant; _variant({name!r}, " \
           f"{path!r}, {frames}, {size})"  # fmt: skip
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def pixel_differences(path: str, frames: int = 24, size: int = 224) -> dict[str, tuple]:
    """DALI CPU vs PyAV on the same frames: (mean, p99, max) |diff| at full size and resized."""
    import numpy as np

    from haic_kernels.video.dali import DaliVideoDecoder
    from haic_kernels.video.frames import preprocess_frames
    from haic_kernels.video.pyav import probe_video, read_frames
    from haic_kernels.video.sampling import sample_frames

    def stats(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, int]:
        d = (a.to(torch.int16) - b.to(torch.int16)).abs().flatten().numpy()
        return round(float(d.mean()), 2), float(np.percentile(d, 99)), int(d.max())

    info = probe_video(path)
    idx = list(sample_frames(info.num_frames, info.fps, "uniform", max_frames=frames,
                             timestamps=info.timestamps).indices)  # fmt: skip
    (dali,) = DaliVideoDecoder("cpu", batch_size=1).decode([(path, idx)])
    pyav = read_frames(path, idx, info=info).frames
    return {
        "full": stats(dali, pyav),
        "resized": stats(preprocess_frames(dali, size), preprocess_frames(pyav, size)),
    }
