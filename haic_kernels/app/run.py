"""`haic run VIDEO` / `haic run --manifest m.jsonl`: answer a question about videos.

Videos are decoded in batches by `VideoLoader` (DALI on a GPU, DALI CPU / PyAV otherwise;
``--decoder`` forces one), then each goes through the model (`common.select_model`: the fast
model on a GPU, the reference on the CPU; ``--model`` forces one) and the timed pipeline
(`pipeline.answer`). A positional VIDEO prints the answer and each stage's time (decode, patch
embed, vision tower, compress + adapter, prefill, decode tokens/s, peak GPU memory); nothing is
printed until the whole answer exists. With ``--manifest`` one JSON line per video goes to
``--output`` (default stdout)::

    {"id": ..., "path": ..., "question": ..., "answer": "<generated text>", "token_ids": [...],
     "frames": 4, "frame_indices": [...], "timestamps": [...], "backend": "dali-cpu",
     "timings_ms": {"decode": ..., "model": ...}, "manifest": {<the manifest line's fields>}}

or, for a video that could not be read, ``{"id", "path", "error", "manifest"}``. Exit status: 0
when every video of the shard was answered, 1 when any failed, 2 for a usage error.
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

from ..models.cogvlm2 import build_prompt
from ..video.loader import VideoLoader
from ..video.manifest import ManifestRecord, read_manifest
from .common import (
    DEFAULT_PROMPT,
    add_model_arguments,
    build_config,
    build_model,
    load_tokenizer,
    resolve_device_dtype,
    select_model,
)
from .pipeline import StageClock, answer, check_context

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "answer a question about a video (VIDEO) or each video of a manifest (--manifest)"
DESCRIPTION = (
    "VIDEO: decode it (DALI on a GPU, PyAV otherwise), run the model (the fast model on a GPU, "
    "the reference on a CPU) and print the answer with each stage's time and the peak GPU "
    "memory. --manifest: decode the videos of a JSON-lines manifest in batches and write one "
    "JSON line per video (answer, token ids, timings, or the error); --shard-id/--num-shards "
    "split the manifest across processes."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--batch-size", type=int, default=8, help="videos decoded per batch")
    p.add_argument("--shard-id", type=int, default=0, help="this process's shard (torchrun rank)")
    p.add_argument("--num-shards", type=int, default=1, help="number of shards (world size)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_model_arguments(p, model_help="auto: the fast model on a GPU, the reference on the CPU")


def _answer_row(batch, b: int, model, kind: str, tokenizer, config, args, device, decode_ms):
    """(the output row of video ``b`` of ``batch``, its `Answer` or None for an error row)."""
    rec = batch.records[b]
    question = rec.question or args.prompt
    t1 = time.perf_counter()
    base = {"id": rec.id, "path": rec.path, "question": question}
    clock = StageClock(device)
    clock.add("decode video", decode_ms, batch.backends[b])
    try:
        frames = batch.video(b)
        prompt = build_prompt(tokenizer, question, frames.shape[0], config)
        check_context(prompt, config, args.max_new_tokens)
        ids, types = (t.unsqueeze(0).to(device) for t in (prompt.input_ids, prompt.token_type_ids))
        result = answer(model, frames.to(device), ids, types, clock=clock,
                        max_new_tokens=args.max_new_tokens,
                        eos_token_id=config.eos_token_id)  # fmt: skip
    except ValueError as e:  # e.g. a prompt longer than the context
        return {**base, "error": str(e), "manifest": rec.to_dict()}, None
    ids = result.tokens[0].tolist()
    stages = {k.replace(" ", "_"): round(v, 3) for k, v in clock.ms.items() if k != "decode video"}
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
            **stages,
        },
        "decode_tokens_per_s": result.decode_tokens_per_s,
        "peak_gpu_mem_bytes": result.peak_mem_bytes,
        "manifest": rec.to_dict(),
    }
    return row, result


def _rows(loader, model, kind, tokenizer, config, args, device) -> Iterator[dict[str, Any]]:
    """One output row per video, in batch order (a batch's errors first)."""
    it = iter(loader)
    while True:
        clock = StageClock(device)
        with clock.stage("decode"):
            batch = next(it, None)
        if batch is None:
            return
        decode_ms = clock.ms["decode"] / max(1, len(batch) + len(batch.errors))
        for err in batch.errors:
            yield {**err.to_dict(), "manifest": err.record.to_dict()}
        for b in range(len(batch)):
            yield _answer_row(batch, b, model, kind, tokenizer, config, args, device, decode_ms)[0]


def _report(row: dict[str, Any], result, note: str, config) -> str:
    tps = result.decode_tokens_per_s
    lines = [
        f"model: {config.name} ({note}), {row['model']}",
        f"video: {row['path']}, {row['frames']} frames at t = "
        f"{', '.join(f'{t:.2f}' for t in row['timestamps'])} s ({row['backend']})",
        f"question: {row['question']}",
        result.clock.report(
            "stage timings (wall clock, synchronized; one run, first-call overheads included):"
        ),
        f"  decode: {f'{tps:.1f} tokens/s' if tps else 'n/a (one token)'}",
    ]
    if result.peak_mem_bytes is not None:
        lines.append(f"  peak GPU memory: {result.peak_mem_bytes / 2**30:.2f} GiB")
    lines += [f"token ids: {row['token_ids']}", f"answer: {row['answer']!r}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """`haic run`: a positional VIDEO (a report on stdout) or ``--manifest`` (JSON lines)."""
    if (args.video is None) == (args.manifest is None):
        print("haic run: error: give one VIDEO or --manifest FILE", file=sys.stderr)
        return 2
    if args.max_new_tokens < 1:
        raise SystemExit("haic run: --max-new-tokens must be at least 1")
    device, dtype = resolve_device_dtype(args)
    config = build_config(args, device)
    try:
        records = (
            [ManifestRecord(path=str(args.video.absolute()))]
            if args.video is not None
            else read_manifest(args.manifest)
        )
        loader = VideoLoader(
            records, policy=config.template, num_frames=config.max_frames,
            size=config.vision.image_size, batch_size=args.batch_size, device=device,
            backend=args.decoder, shard_id=args.shard_id, num_shards=args.num_shards,
            progress=not args.no_progress and args.video is None,
        )  # fmt: skip
    except (ValueError, ImportError, RuntimeError) as e:  # ManifestError is a ValueError
        print(f"haic run: error: {e}", file=sys.stderr)
        return 2
    if args.video is not None:
        # Decode first: a bad video fails before any weights are built or read.
        clock = StageClock(device)
        with clock.stage("decode video"):
            batch = next(iter(loader))
        if batch.errors:
            print(f"haic run: error: cannot read {args.video}: {batch.errors[0].reason}",
                  file=sys.stderr)  # fmt: skip
            return 1
    reference, note = build_model(args, config, device, dtype)
    model, kind = select_model(args, reference, device)
    tokenizer = load_tokenizer(args.checkpoint, config)

    if args.video is not None:
        row, result = _answer_row(batch, 0, model, kind, tokenizer, config, args, device,
                                  clock.ms["decode video"])  # fmt: skip
        if result is None:
            print(f"haic run: error: {row['error']}", file=sys.stderr)
            return 2
        print(_report(row, result, note, config))
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
        for row in _rows(loader, model, kind, tokenizer, config, args, device):
            n_err += "error" in row
            n_ok += "error" not in row
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
    print(f"haic run: {n_ok} videos answered, {n_err} failed", file=sys.stderr)
    return 0 if n_err == 0 else 1
