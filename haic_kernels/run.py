"""`haic run VIDEO` / `haic run --manifest m.jsonl`: answer a question about videos.

A positional VIDEO is answered by `run_video` (run_video.py): the answer and per-stage timings
(decode, patch embed, vision tower, compress + adapter, prefill, decode tokens/s, peak GPU
memory) are printed. With ``--manifest``:

Videos are decoded in batches by `VideoLoader` (DALI on a GPU, DALI CPU / PyAV otherwise), then
each goes through the reference model (built as `haic demo` builds it) and greedy decoding. One
JSON line per video goes to ``--output`` (default stdout)::

    {"id": ..., "path": ..., "question": ..., "answer": "<generated text>", "token_ids": [...],
     "frames": 4, "frame_indices": [...], "timestamps": [...], "backend": "dali-cpu",
     "timings_ms": {"decode": ..., "model": ...}, "manifest": {<the manifest line's fields>}}

or, for a video that could not be read, ``{"id", "path", "error", "manifest"}``. Exit status: 0
when every video of the shard was answered, 1 when any failed, 2 for a usage error.
Model: ``--model auto`` runs the fast model (`FastCogVLM2`, kernels chosen by ``--backend``) on
a GPU and the reference model on the CPU; ``--model fast|reference`` forces one. ``--decoder``
picks the video decoder (auto: DALI where it can, else PyAV).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .demo import DEFAULT_PROMPT, add_model_arguments
from .run_video import MODELS


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", type=Path, nargs="?", default=None, help="one video file to answer")
    p.add_argument("--manifest", type=Path, default=None, help="JSON-lines manifest of videos")
    p.add_argument(
        "--output", type=Path, default=None, help="write JSON lines here (default: stdout)"
    )
    p.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help="question for lines without a 'question' field"
    )
    p.add_argument(
        "--decoder", default="auto", choices=["auto", "dali", "pyav"], help="video decoder"
    )
    p.add_argument(
        "--backend",
        default="auto",
        help="kernel backend of the fast model (auto, torch, triton, cuda)",
    )
    p.add_argument(
        "--model", default="auto", choices=MODELS,
        help="auto: the fast model on a GPU, the reference on the CPU",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="videos decoded per batch")
    p.add_argument("--shard-id", type=int, default=0, help="this process's shard (torchrun rank)")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards (world size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_model_arguments(p)


def collect_records(args: argparse.Namespace):
    """The manifest records to run (the place to add positional VIDEO paths).

    Raises `ManifestError` (a ValueError) naming the bad line."""
    from .video.manifest import ManifestRecord, read_manifest

    if args.video is not None:
        return [ManifestRecord(path=str(args.video.absolute()))]
    return read_manifest(args.manifest)


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def _answer_row(batch, b, model, kind, tokenizer, config, args, device, dtype, decode_ms):
    """(the output row of video ``b`` of ``batch``, its `Timed` or None for an error row)."""
    from .models.cogvlm2 import build_prompt
    from .run_video import answer_timed

    rec = batch.records[b]
    question = rec.question or args.prompt
    t1 = time.perf_counter()
    base = {"id": rec.id, "path": rec.path, "question": question}
    try:
        frames = batch.video(b)
        prompt = build_prompt(tokenizer, question, frames.shape[0], config)
        timed = answer_timed(model, kind, config, frames, prompt, device=device, dtype=dtype,
                             max_new_tokens=args.max_new_tokens)  # fmt: skip
    except ValueError as e:  # e.g. a prompt longer than the context
        return {**base, "error": str(e), "manifest": rec.to_dict()}, None
    ids = timed.token_ids
    row = {
        **base,
        "answer": tokenizer.decode(ids),
        "token_ids": ids,
        "frames": batch.num_frames[b],
        "frame_indices": list(batch.indices[b]),
        "timestamps": [round(t, 6) for t in batch.timestamps[b]],
        "backend": batch.backends[b],
        "model": kind,
        "timings_ms": {
            "decode": round(decode_ms, 3),  # the batch's decode time / its videos
            "model": round((time.perf_counter() - t1) * 1e3, 3),
            **{k.replace(" ", "_"): round(v, 3) for k, v in timed.stages_ms.items()},
        },
        "decode_tokens_per_s": timed.decode_tokens_per_s,
        "peak_gpu_mem_bytes": timed.peak_mem_bytes,
        "manifest": rec.to_dict(),
    }
    return row, timed


def _rows(loader, model, kind, tokenizer, config, args, device, dtype) -> Iterator[dict[str, Any]]:
    """One output row per video, in batch order (a batch's errors first)."""
    it = iter(loader)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            return
        _sync(device)
        decode_ms = (time.perf_counter() - t0) * 1e3 / max(1, len(batch) + len(batch.errors))
        for err in batch.errors:
            yield {**err.to_dict(), "manifest": err.record.to_dict()}
        for b in range(len(batch)):
            yield _answer_row(
                batch, b, model, kind, tokenizer, config, args, device, dtype, decode_ms
            )[0]


def _print_single(row: dict[str, Any], timed_report: str, config, note: str) -> None:
    print(f"model: {config.name} ({note}), {row['model']}")
    print(
        f"video: {row['path']}, {row['frames']} frames at t = "
        f"{', '.join(f'{t:.2f}' for t in row['timestamps'])} s ({row['backend']})"
    )
    print(f"question: {row['question']}")
    print(timed_report)
    print(f"token ids: {row['token_ids']}")
    print(f"answer: {row['answer']!r}")


def run_manifest(args: argparse.Namespace) -> int:
    """`haic run`: a positional VIDEO (a report on stdout) or ``--manifest`` (JSON lines)."""
    from .demo import _load_tokenizer, build_config, build_model, resolve_device_dtype
    from .run_video import format_report, select_model
    from .video.loader import VideoLoader

    if (args.video is None) == (args.manifest is None):
        print("haic run: error: give one VIDEO or --manifest FILE", file=sys.stderr)
        return 2
    if args.max_new_tokens < 1:
        raise SystemExit("haic run: --max-new-tokens must be at least 1")
    device, dtype = resolve_device_dtype(args)
    config = build_config(args, device)
    try:
        records = collect_records(args)
        loader = VideoLoader(
            records,
            policy=config.template,
            num_frames=config.max_frames,
            size=config.vision.image_size,
            batch_size=args.batch_size,
            device=device,
            backend=args.decoder,
            shard_id=args.shard_id,
            num_shards=args.num_shards,
            progress=not args.no_progress and args.video is None,
        )
    except (ValueError, ImportError, RuntimeError) as e:  # ManifestError is a ValueError
        print(f"haic run: error: {e}", file=sys.stderr)
        return 2
    if args.video is not None:
        # Decode first: a bad video fails before any weights are built or read.
        t0 = time.perf_counter()
        batch = next(iter(loader))
        _sync(device)
        decode_ms = (time.perf_counter() - t0) * 1e3
        if batch.errors:
            print(f"haic run: error: cannot read {args.video}: {batch.errors[0].reason}",
                  file=sys.stderr)  # fmt: skip
            return 1
    reference, note = build_model(args, config, device, dtype)
    model, kind = select_model(args, reference, device)
    tokenizer = _load_tokenizer(args.checkpoint, config)

    if args.video is not None:
        row, timed = _answer_row(
            batch, 0, model, kind, tokenizer, config, args, device, dtype, decode_ms
        )
        if timed is None:
            print(f"haic run: error: {row['error']}", file=sys.stderr)
            return 2
        report = format_report(timed, decode_ms=decode_ms, decoder=row["backend"])
        _print_single(row, report, config, note)
        if args.output is not None:
            args.output.write_text(json.dumps(row, ensure_ascii=False) + "\n")
        return 0

    n_ok = n_err = 0
    with contextlib.ExitStack() as stack:
        out = (
            stack.enter_context(open(args.output, "w", encoding="utf-8"))
            if args.output
            else sys.stdout
        )
        for row in _rows(loader, model, kind, tokenizer, config, args, device, dtype):
            n_err += "error" in row
            n_ok += "error" not in row
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
    print(f"haic run: {n_ok} videos answered, {n_err} failed", file=sys.stderr)
    return 0 if n_err == 0 else 1
