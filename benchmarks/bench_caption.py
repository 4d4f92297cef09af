"""Captions per hour: `haic caption` (embedded engine) vs `haic run --manifest` vs a plain loop
over the reference model, on one synthetic manifest. Prints a markdown table.

    python benchmarks/bench_caption.py [--videos 64] [--config tiny] [--device cpu]
        [--max-new-tokens 16] [--batch-size 8] [--width 64 --height 48 --seconds 3]

On a GPU: ``--config full --device cuda`` (random bf16 weights: the text is meaningless, the
work is the real model's). Each command runs in its own interpreter and is timed end to end
(start-up and model set-up included: what a user waits for); `haic caption`'s own accounting
(``throughput.json``: wall time after set-up, the model stage's busy share) is shown as well.
The plain loop (decode one video, answer it, next) runs in this process, model set-up excluded.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from haic_kernels.app.common import DEFAULT_PROMPT, build_model
from haic_kernels.app.pipeline import answer, decode_clip
from haic_kernels.models.cogvlm2 import ByteTokenizer, build_prompt, get_config
from haic_kernels.video.synthetic import write_clip


def _manifest(root: Path, args: argparse.Namespace) -> Path:
    opts = {"cpu-used": "8", "deadline": "realtime"}
    lines = []
    for i in range(args.videos):
        clip = root / f"clip{i % 8}.webm"
        if not clip.exists():
            write_clip(clip, args.fps * args.seconds + i % 8, fps=args.fps, width=args.width,
                       height=args.height, options=opts)  # fmt: skip
        lines.append(json.dumps({"id": f"v{i:05d}", "path": clip.name}) + "\n")
    m = root / "manifest.jsonl"
    m.write_text("".join(lines))
    return m


def _timed(cmd: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return time.perf_counter() - t0


def _plain_loop(manifest: Path, args: argparse.Namespace) -> float:
    """Decode a video, answer it with the reference model, next: seconds for all of them."""
    ns = argparse.Namespace(checkpoint=None, seed=0, config=args.config, variant="video-chat")
    import torch

    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    config = get_config(args.config, "video-chat")
    model, _ = build_model(ns, config, device, dtype)
    tok = ByteTokenizer()
    paths = [manifest.parent / json.loads(x)["path"] for x in manifest.read_text().splitlines()]
    t0 = time.perf_counter()
    for path in paths:
        frames, _ = decode_clip(path, config)
        p = build_prompt(tok, DEFAULT_PROMPT, frames.shape[0], config)
        answer(model, frames.to(device), p.input_ids[None].to(device),
               p.token_type_ids[None].to(device), max_new_tokens=args.max_new_tokens,
               eos_token_id=list(config.eos_token_ids))  # fmt: skip
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=64)
    ap.add_argument("--config", default="tiny", choices=["tiny", "small", "full"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=48)
    ap.add_argument("--fps", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)
    root = Path(args.dir or tempfile.mkdtemp(prefix="haic_caption_bench_"))
    root.mkdir(parents=True, exist_ok=True)
    manifest = _manifest(root, args)
    haic = [sys.executable, "-m", "haic_kernels.app.cli"]
    model = ["--config", args.config, "--device", args.device,
             "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
    out = root / f"caption-{time.time_ns()}"
    t_caption = _timed([*haic, "caption", str(manifest), "--output", str(out), "--no-progress",
                        "--batch-size", str(args.batch_size), *model])  # fmt: skip
    acct = json.loads((out / "throughput.json").read_text())
    t_run = _timed([*haic, "run", "--manifest", str(manifest), "--output", str(root / "run.jsonl"),
                    "--no-progress", "--batch-size", str(args.batch_size), *model])  # fmt: skip
    t_loop = _plain_loop(manifest, args)
    n = args.videos
    print(f"{n} videos ({args.width}x{args.height}, {args.seconds} s at {args.fps} fps), "
          f"config {args.config}, {args.device}, {args.max_new_tokens} new tokens; "
          f"load average {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| method | seconds | videos/hour | note |\n| --- | --- | --- | --- |")
    rows = [
        ("haic caption (embedded), end to end", t_caption, f"batch {args.batch_size}"),
        ("haic caption, after set-up", acct["wall_s"],
         f"model stage busy {100 * acct['model_busy_fraction']:.0f}% of it"),
        ("haic run --manifest, end to end", t_run, "one video per model call"),
        ("plain loop over the reference model", t_loop, "decode, answer, next; set-up excluded"),
    ]  # fmt: skip
    for name, secs, note in rows:
        print(f"| {name} | {secs:.1f} | {n / secs * 3600:.0f} | {note} |")
    print(f"\nhaic caption stages (s): {json.dumps(acct['stages_s'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
