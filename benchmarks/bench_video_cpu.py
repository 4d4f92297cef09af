"""CPU video measurements: PyAV's read path vs a plain forward pass and the ffmpeg CLI, DALI's
CPU decoder vs PyAV (speed, pixels). Prints markdown tables for the README's "Video input".

    python benchmarks/bench_video_cpu.py [--reps 5] [--dir /tmp/haic_video_cpu] [--clips NAME ...]

Each run of a variant is its own interpreter, so its peak memory is its own. Runs are
interleaved (rep 1 of every variant of a clip, then rep 2, ...) so that the load of a shared
machine falls on all variants alike; the table gives the median wall time, its spread (min-max)
and the median CPU time (user + system, ffmpeg's included). "vs best" divides each median by the
faster median of the plain forward pass and the ffmpeg CLI; "vs best (min)" does the same with
the fastest run of each (the least disturbed by other jobs). Clips are written once into --dir.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from pathlib import Path

from haic_kernels.bench.suites.video import _fast_clip, measure_variant, pixel_differences

CLIPS = {  # name: (codec, width, height, fps, frames)
    "h264-1080p-10s": ("libx264", 1920, 1080, 24, 240),
    "h264-480p-20s": ("libx264", 854, 480, 24, 480),
    "vp9-720p-5s": ("libvpx-vp9", 1280, 720, 24, 120),
    "vp9-480p-5s": ("libvpx-vp9", 854, 480, 24, 120),
}
BASELINES = ("plain forward pass", "ffmpeg cli")


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/haic_video_cpu")
    ap.add_argument("--clips", nargs="+", choices=sorted(CLIPS), default=list(CLIPS))
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error(f"--reps must be at least 1, got {args.reps}")
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in args.clips:
        codec, w, h, fps, n = CLIPS[name]
        ext = "mp4" if codec == "libx264" else "webm"
        paths[name] = _fast_clip((str(root / f"{name}.{ext}"), codec, w, h, fps, n))
    has_dali = True
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        has_dali = False
    has_ffmpeg = shutil.which("ffmpeg") is not None
    print(f"ffmpeg CLI: {shutil.which('ffmpeg') or 'not on PATH'}; DALI: {has_dali}; "
          f"CPUs: {os.cpu_count()}; load average (1/5/15 min) at start: {_load()}")  # fmt: skip
    print("\n| clip | variant | wall s (median) | min-max | CPU s | peak RSS MiB | extra MiB "
          "| vs best | vs best (min) |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for name, path in paths.items():
        variants = ["plain forward pass", "pyav read_frames", "pyav read_frames release"]
        variants += ["ffmpeg cli"] if has_ffmpeg else []
        variants += ["dali cpu"] if has_dali and CLIPS[name][0] != "libx264" else []
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for rep in range(args.reps):
            for v in variants[rep % len(variants) :] + variants[: rep % len(variants)]:
                runs[v].append(measure_variant(v, path))
        med = {v: statistics.median(r["seconds"] for r in rs) for v, rs in runs.items()}
        low = {v: min(r["seconds"] for r in rs) for v, rs in runs.items()}
        best = min(med[v] for v in BASELINES if v in med)
        best_low = min(low[v] for v in BASELINES if v in low)
        for v, rs in runs.items():
            secs = [r["seconds"] for r in rs]
            cpu, peak, extra = (statistics.median(r[k] for r in rs)
                                for k in ("cpu_s", "peak_mib", "extra_mib"))  # fmt: skip
            print(f"| {name} | {v} | {med[v]:.2f} | {min(secs):.2f}-{max(secs):.2f} | {cpu:.2f} "
                  f"| {peak:.0f} | {extra:.0f} | {med[v] / best:.2f}x "
                  f"| {low[v] / best_low:.2f}x |")  # fmt: skip
    print(f"\nload average at end: {_load()}")
    if has_dali:
        print("\n| clip | DALI CPU vs PyAV | mean | p99 | max |")
        print("|---|---|---|---|---|")
        for name, path in paths.items():
            if CLIPS[name][0] == "libx264":
                continue
            for where, (mean, p99, mx) in pixel_differences(path).items():
                print(f"| {name} | {where} | {mean} | {p99:.0f} | {mx} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
