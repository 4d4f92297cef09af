"""`haic run VIDEO|IMAGE` / `haic run --manifest m.jsonl`: answer a question about videos.

Before any model is built (`common.prepare`): the options, the input path (a file, not a
folder), the output folder, the device, the config, the tokenizer (checked against the config)
and the template (``--template``; it also picks the frame sampling), then the input is decoded
and the prompt checked against the context. Then the model (`common.select_model`: the fast
model on a GPU, the reference on the CPU; ``--model`` forces one) runs the timed pipeline
(`pipeline.answer`), stopping on every eos id of the config, with ``--do-sample`` and friends
or greedily.

A positional VIDEO (decoded by `VideoLoader`: DALI on a GPU, PyAV otherwise; ``--decoder``
forces one) or IMAGE (``.jpg``, ``.png``, ...: the image model, `pipeline.decode_image`) prints
the answer and each stage's time (decode, patch embed, vision tower, compress + adapter,
prefill, decode tokens/s, peak GPU memory); ``--stream`` prints the answer as it is generated.
With ``--manifest`` one JSON line per video goes to ``--output`` (default stdout)::

    {"id": ..., "path": ..., "question": ..., "answer": "<generated text>", "token_ids": [...],
     "frames": 4, "frame_indices": [...], "timestamps": [...], "backend": "dali-cpu",
     "template": "chat", "timings_ms": {"decode": ..., "model": ...},
     "manifest": {<the manifest line's fields>}}

or, for a video that could not be read, ``{"id", "path", "error", "manifest"}``. Exit status
(`errors`): 0 when every input was answered, 1 when any could not be read, 2 for a usage error,
3 for a checkpoint that cannot be used.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models.cogvlm2 import build_prompt
from ..video.image import ImageLoadError
from ..video.loader import VideoLoader
from ..video.manifest import ManifestRecord, read_manifest
from .common import (
    DEFAULT_PROMPT,
    Setup,
    add_model_arguments,
    build_model,
    non_negative_int,
    positive_int,
    prepare,
    select_model,
)
from .errors import EXIT_FAILED, EXIT_OK, CommandError, failed, usage_error
from .generation import TextStream, add_sampling_arguments, sampling_params
from .pipeline import Answer, StageClock, answer, decode_image, is_image

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "check_input_file", "check_output_file", "run"]

PROG = "haic run"
HELP = "answer a question about a video or image, or each video of a manifest (--manifest)"
DESCRIPTION = (
    "VIDEO: decode it (DALI on a GPU, PyAV otherwise); IMAGE (.jpg, .png, ...): the image model. "
    "Run the model (the fast model on a GPU, the reference on a CPU) and print the answer with "
    "each stage's time and the peak GPU memory. --manifest: decode the videos of a JSON-lines "
    "manifest in batches and write one JSON line per video (answer, token ids, timings, or the "
    "error); --shard-id/--num-shards split the manifest across processes."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "input",
        metavar="VIDEO|IMAGE",
        type=Path,
        nargs="?",
        default=None,
        help="one video or image file to answer",
    )
    p.add_argument("--manifest", type=Path, default=None, help="JSON-lines manifest of videos")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write JSON lines here (default: stdout); its folder must exist",
    )
    p.add_argument(
        "--prompt",
        default=DEFAULT_PROMPT,
        help="question (for --manifest: lines without a 'question' field)",
    )
    p.add_argument(
        "--decoder", default="auto", choices=["auto", "dali", "pyav"], help="video decoder"
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="videos decoded per batch")
    p.add_argument(
        "--shard-id", type=non_negative_int, default=0, help="this process's shard (torchrun rank)"
    )
    p.add_argument(
        "--num-shards", type=positive_int, default=1, help="number of shards (world size)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    add_model_arguments(p, model_help="auto: the fast model on a GPU, the reference on the CPU")
    add_sampling_arguments(p)


def check_input_file(path: Path, option: str) -> Path:
    """``path`` if it is an existing file; a usage error naming ``option`` otherwise (a folder
    is named as a folder)."""
    if path.is_dir():
        raise usage_error(f"{option} {path}: is a directory, not a file")
    if not path.exists():
        raise usage_error(f"{option} {path}: no such file")
    if not path.is_file():
        raise usage_error(f"{option} {path}: not a regular file")
    return path


def check_output_file(path: Path | None, option: str = "--output") -> Path | None:
    """``path`` if a file can be written there (its folder exists, it is not a folder); a usage
    error otherwise. Checked before any model is built, so a typo costs nothing."""
    if path is None:
        return None
    if path.is_dir():
        raise usage_error(f"{option} {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise usage_error(f"{option} {path}: the folder {path.parent} does not exist")
    return path


@dataclass
class Item:
    """One decoded input: its manifest record, frames (on the CPU) and where they came from."""

    record: ManifestRecord
    frames: Any
    indices: list[int]
    timestamps: list[float]
    backend: str
    decode_ms: float

    @classmethod
    def of_batch(cls, batch, b: int, decode_ms: float) -> Item:
        return cls(
            batch.records[b],
            batch.video(b),
            list(batch.indices[b]),
            list(batch.timestamps[b]),
            batch.backends[b],
            decode_ms,
        )


def _answer_row(item: Item, model, kind: str, setup: Setup, args, on_token=None):
    """(the output row of ``item``, its `Answer`; None for an error row)."""
    rec = item.record
    question = rec.question or args.prompt
    t1 = time.perf_counter()
    base = {"id": rec.id, "path": rec.path, "question": question}
    clock = StageClock(setup.device)
    clock.add(
        "decode image" if item.backend == "pillow" else "decode video", item.decode_ms, item.backend
    )
    num_frames = int(item.frames.shape[0])
    try:
        prompt = build_prompt(
            setup.tokenizer, question, num_frames, setup.config, template=setup.template
        )
        generation = setup.generation(prompt)
    except (ValueError, CommandError) as e:  # e.g. a prompt longer than the context
        return {**base, "error": getattr(e, "message", str(e)), "manifest": rec.to_dict()}, None
    ids, types = (
        t.unsqueeze(0).to(setup.device) for t in (prompt.input_ids, prompt.token_type_ids)
    )
    result = answer(model, item.frames.to(setup.device), ids, types, clock=clock,
                    on_token=on_token, **generation)  # fmt: skip
    token_ids = result.tokens[0].tolist()
    stages = {
        k.replace(" ", "_"): round(v, 3)
        for k, v in clock.ms.items()
        if k not in ("decode video", "decode image")
    }
    row = {
        **base,
        "answer": setup.tokenizer.decode(token_ids),
        "token_ids": token_ids,
        "frames": num_frames,
        "frame_indices": item.indices,
        "timestamps": [round(t, 6) for t in item.timestamps],
        "backend": item.backend,
        "model": kind,
        "template": setup.template,
        "timings_ms": {
            "decode": round(item.decode_ms, 3),  # the batch's decode time / its videos
            "model": round((time.perf_counter() - t1) * 1e3, 3),
            **stages,
        },
        "decode_tokens_per_s": result.decode_tokens_per_s,
        "peak_gpu_mem_bytes": result.peak_mem_bytes,
        "manifest": rec.to_dict(),
    }
    return row, result


def _rows(loader, model, kind, setup: Setup, args) -> Iterator[dict[str, Any]]:
    """One output row per video, in batch order (a batch's errors first)."""
    it = iter(loader)
    while True:
        clock = StageClock(setup.device)
        with clock.stage("decode"):
            batch = next(it, None)
        if batch is None:
            return
        decode_ms = clock.ms["decode"] / max(1, len(batch) + len(batch.errors))
        for err in batch.errors:
            yield {**err.to_dict(), "manifest": err.record.to_dict()}
        for b in range(len(batch)):
            yield _answer_row(Item.of_batch(batch, b, decode_ms), model, kind, setup, args)[0]


def _header(item: Item, setup: Setup, note: str, kind: str, question: str) -> str:
    what = "image" if setup.config.vision_expert else "video"
    return "\n".join(
        [
            f"model: {setup.config.name} ({note}), {kind}, template {setup.template}, "
            f"preprocess {setup.preprocess}",
            f"{what}: {item.record.path}, {item.frames.shape[0]} frames at t = "
            f"{', '.join(f'{t:.2f}' for t in item.timestamps)} s ({item.backend})",
            f"question: {question}",
        ]
    )


def _report(row: dict[str, Any], result: Answer, streamed: bool) -> str:
    tps = result.decode_tokens_per_s
    lines = [
        result.clock.report(
            "stage timings (wall clock, synchronized; one run, first-call overheads included):"
        ),
        f"  decode: {f'{tps:.1f} tokens/s' if tps else 'n/a (one token)'}",
    ]
    if result.peak_mem_bytes is not None:
        lines.append(f"  peak GPU memory: {result.peak_mem_bytes / 2**30:.2f} GiB")
    lines.append(f"token ids: {row['token_ids']}")
    if not streamed:
        lines.append(f"answer: {row['answer']!r}")
    return "\n".join(lines)


def _decode_single(args, setup: Setup, loader: VideoLoader | None) -> Item:
    """The positional input, decoded (a failure is `EXIT_FAILED`, naming the file)."""
    record = ManifestRecord(path=str(args.input.absolute()))
    clock = StageClock(setup.device)
    if loader is None:
        try:
            frames = decode_image(
                args.input, setup.config, preprocess=setup.preprocess, clock=clock
            )
        except (ImageLoadError, ImportError) as e:
            raise failed(f"cannot read {args.input}: {getattr(e, 'reason', e)}") from None
        return Item(record, frames, [0], [0.0], "pillow", clock.ms["decode image"])
    with clock.stage("decode video"):
        batch = next(iter(loader))
    if batch.errors:
        raise failed(f"cannot read {args.input}: {batch.errors[0].reason}")
    return Item.of_batch(batch, 0, clock.ms["decode video"])


def run(args: argparse.Namespace) -> int:
    """`haic run`: a positional VIDEO|IMAGE (a report on stdout) or ``--manifest`` (JSON lines)."""
    if (args.input is None) == (args.manifest is None):
        raise usage_error("give one VIDEO|IMAGE or --manifest FILE")
    single = args.input is not None
    if single:
        check_input_file(args.input, "VIDEO|IMAGE")
    else:
        check_input_file(args.manifest, "--manifest")
        if args.stream:
            raise usage_error("--stream prints one answer: give one VIDEO|IMAGE, not --manifest")
    check_output_file(args.output)
    image = is_image(args.input) if single else False
    setup = prepare(args, PROG, image=image, sampling=sampling_params(args, PROG))
    loader = None
    if not image:
        try:
            records = (
                [ManifestRecord(path=str(args.input.absolute()))]
                if single
                else read_manifest(args.manifest)
            )
            loader = VideoLoader(
                records,
                policy=setup.policy,
                num_frames=setup.config.max_frames,
                size=setup.config.vision.image_size,
                batch_size=args.batch_size,
                device=setup.device,
                backend=args.decoder,
                shard_id=args.shard_id,
                num_shards=args.num_shards,
                preprocess=setup.preprocess,
                progress=not args.no_progress and not single,
            )
        except (ValueError, ImportError, RuntimeError) as e:  # ManifestError is a ValueError
            raise usage_error(e) from None
    if single:
        return _run_single(args, setup, loader)
    reference, _ = build_model(args, setup.config, setup.device, setup.dtype)
    model, kind = select_model(args, reference, setup.device)
    n_ok = n_err = 0
    with contextlib.ExitStack() as stack:
        out = (
            stack.enter_context(open(args.output, "w", encoding="utf-8"))
            if args.output
            else sys.stdout
        )
        for row in _rows(loader, model, kind, setup, args):
            n_err += "error" in row
            n_ok += "error" not in row
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
    print(f"{PROG}: {n_ok} videos answered, {n_err} failed", file=sys.stderr)
    return EXIT_OK if n_err == 0 else EXIT_FAILED


def _run_single(args, setup: Setup, loader: VideoLoader | None) -> int:
    # Decode and check the prompt first: a bad input fails before any weights are read.
    item = _decode_single(args, setup, loader)
    prompt = build_prompt(
        setup.tokenizer,
        args.prompt,
        int(item.frames.shape[0]),
        setup.config,
        template=setup.template,
    )
    setup.new_tokens(prompt)  # a usage error when it does not fit the context
    reference, note = build_model(args, setup.config, setup.device, setup.dtype)
    model, kind = select_model(args, reference, setup.device)
    stream = None
    if args.stream:
        print(_header(item, setup, note, kind, args.prompt))
        print("answer: ", end="", flush=True)
        stream = TextStream(setup.tokenizer)
    row, result = _answer_row(
        item,
        model,
        kind,
        setup,
        args,
        on_token=None if stream is None else stream.on_token,
    )
    if result is None:
        raise usage_error(row["error"])
    if stream is not None:
        stream.finish()
    else:
        print(_header(item, setup, note, kind, args.prompt))
    print(_report(row, result, streamed=stream is not None))
    if args.output is not None:
        args.output.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    return EXIT_OK
