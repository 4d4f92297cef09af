"""CPU video measurements: PyAV's read path vs a plain forward pass (and the ffmpeg CLI), DALI's
CPU decoder vs PyAV (speed, pixels). Prints markdown tables for the README's "Video input".

    python benchmarks/bench_video_cpu.py [--reps 3] [--dir /tmp/haic_video]

Each timed variant runs in its own interpreter, so its peak memory is its own; the median of
``--reps`` runs is shown. Clips are written once into ``--dir``.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/haic_video_cpu")
    args = ap.parse_args(argv)
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (codec, w, h, fps, n) in CLIPS.items():
        ext = "mp4" if codec == "libx264" else "webm"
        paths[name] = _fast_clip((str(root / f"{name}.{ext}"), codec, w, h, fps, n))
    has_dali = True
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        has_dali = False
    print(f"ffmpeg CLI on PATH: {shutil.which('ffmpeg') or 'no'}; DALI: {has_dali}")
    print("\n| clip | variant | s (median) | peak RSS MiB | extra MiB | vs plain |")
    print("|---|---|---|---|---|---|")
    for name, path in paths.items():
        variants = ["plain forward pass", "pyav read_frames", "pyav read_frames release"]
        if has_dali and CLIPS[name][0] != "libx264":
            variants.append("dali cpu")
        base = None
        for v in variants:
            runs = [measure_variant(v, path) for _ in range(args.reps)]
            sec = statistics.median(r["seconds"] for r in runs)
            peak = statistics.median(r["peak_mib"] for r in runs)
            extra = statistics.median(r["extra_mib"] for r in runs)
            base = sec if base is None else base
            print(f"| {name} | {v} | {sec:.2f} | {peak:.0f} | {extra:.0f} | {sec / base:.2f}x |")
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
