"""`haic caption MANIFEST --output DIR`: caption every video of a manifest, resumably.

Exit status: 0 when every row in DIR is an answer, 1 when some are error rows (unreadable
videos, prompts too long, videos that killed their worker), 2 for a usage error (bad options,
a bad or duplicated manifest line, an output folder of another set-up or in use).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from ...models.cogvlm2 import TEMPLATES
from ...video.frames import PREPROCESS_MODES
from ...video.manifest import ManifestError
from ..common import DEFAULT_PROMPT, add_model_arguments, resolve_device_dtype
from ..errors import usage_error
from . import ray_engine
from .captioner import Captioner, job_spec
from .embedded import run_embedded
from .job import UnitCommitter
from .plan import plan_units, read_entries
from .store import CaptionStore, OutputError
from .testpoints import TestPoints

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "caption every video of a manifest into resumable shards (one machine, or Ray Data)"
DESCRIPTION = (
    "Answer the prompt for every video of a JSON-lines manifest and write one row per video "
    "(answer or error, frame indices, timestamps, model, template, timings) into shards under "
    "--output: JSONL, plus Parquet when pyarrow is installed. Each shard is complete or absent; "
    "rerunning the same command skips the ids already written, so a job killed at any point "
    "resumes where it stopped. --engine embedded (default): decode threads ahead of the model "
    "in this process. --engine ray: Ray Data, CPU decode actors and GPU model actors."
)


def _add_unless_present(p: argparse.ArgumentParser, flag: str, **kw) -> None:
    """Add ``flag`` unless the shared model options already define it (they may grow)."""
    with contextlib.suppress(argparse.ArgumentError):
        p.add_argument(flag, **kw)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", type=Path, help="JSON-lines manifest (path, id, question, ...)")
    p.add_argument("--output", type=Path, required=True, help="output folder (created)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT,
                   help="question for lines without a 'question' field")  # fmt: skip
    p.add_argument("--engine", default="embedded", choices=["embedded", "ray"])
    p.add_argument("--batch-size", type=int, default=8, help="videos per model call")
    p.add_argument("--shard-size", type=int, default=256, help="manifest entries per shard")
    p.add_argument("--decode-workers", type=int, default=None,
                   help="decode threads (embedded; default: CPU count, at most 16) or decode "
                   "actors (ray; default: the cluster's CPUs the model actors leave)")  # fmt: skip
    p.add_argument("--prefetch", type=int, default=2,
                   help="embedded: decoded batches kept ready ahead of the model")  # fmt: skip
    p.add_argument("--decoder", default="auto", choices=["auto", "dali", "pyav"])
    p.add_argument("--no-parquet", action="store_true", help="JSONL shards only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    g = p.add_argument_group("--engine ray")
    g.add_argument("--ray-address", default=None,
                   help="join this cluster (default: $RAY_ADDRESS, else start one on this "
                   "machine, listening on 127.0.0.1 only)")  # fmt: skip
    g.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of a local cluster")
    g.add_argument("--model-workers", type=int, default=None,
                   help="model actors (default: one per GPU, or 1 on CPUs)")  # fmt: skip
    g.add_argument("--max-attempts", type=int, default=2,
                   help="deaths of a worker on one video before it is an error row")  # fmt: skip
    add_model_arguments(
        p, model_help="auto: the fast model on every device (it takes ragged batches)"
    )
    _add_unless_present(p, "--template", default=None, choices=TEMPLATES,
                        help="prompt template (default: the release demos' choice)")  # fmt: skip
    _add_unless_present(p, "--preprocess", default="fast", choices=PREPROCESS_MODES,
                        help="frame preprocessing (see README, Video input)")  # fmt: skip


def _usage(message: str) -> int:
    raise usage_error(message)  # cli.main prints it as one line, status 2


def run(args: argparse.Namespace) -> int:
    """`haic caption`; see the module docstring for the exit status."""
    for flag in ("batch_size", "shard_size", "prefetch", "max_attempts", "decode_workers",
                 "model_workers", "ray_num_cpus"):  # fmt: skip
        value = getattr(args, flag)
        if value is not None and value < 1:
            return _usage(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    try:
        points = TestPoints.from_env()
        entries = read_entries(args.manifest)
    except (ManifestError, ValueError) as e:
        return _usage(str(e))
    spec, warning = job_spec(args)
    if warning:
        print(f"haic caption: note: {warning}", file=sys.stderr)
    store = CaptionStore(args.output, parquet=False if args.no_parquet else None, points=points)
    try:
        done = store.open(spec.settings())
    except OutputError as e:
        return _usage(str(e))
    try:
        return _run(args, spec, store, entries, done, points)
    finally:
        store.close()


def _run(args, spec, store: CaptionStore, entries, done, points: TestPoints) -> int:
    units = plan_units(entries, done, args.shard_size)
    pending = sum(len(u.entries) for u in units)
    stray = len(set(done) - {e.id for e in entries})
    print(f"haic caption: {len(entries)} videos, {len(entries) - pending} already in "
          f"{args.output}, {pending} to caption ({len(units)} shards)"
          + (f"; {stray} rows there are of ids not in this manifest (kept)" if stray else ""),
          file=sys.stderr)  # fmt: skip
    if pending:
        try:  # a decoder that is not installed, a device that is not there: refused here
            spec.loader([], device="cpu" if args.engine == "ray" else resolve_device_dtype(args)[0])
        except (ValueError, ImportError, RuntimeError) as e:
            return _usage(str(e))
        committer = UnitCommitter(store, units, total=len(entries), progress=not args.no_progress)
        try:
            if args.engine == "ray":
                acct = ray_engine.run_ray(spec, units, committer, args, points)
            else:
                t0, cpus = time.perf_counter(), os.cpu_count() or 1
                captioner = Captioner.load(spec)
                setup = time.perf_counter() - t0
                acct = run_embedded(spec, captioner, units, committer,
                                    batch_size=args.batch_size,
                                    decode_workers=args.decode_workers or min(16, cpus),
                                    prefetch=args.prefetch, points=points)  # fmt: skip
                acct.setup_s = setup
        finally:
            committer.close()
        acct.write(store)
        print(f"haic caption: {acct.summary()}; accounting in {args.output}/throughput.json",
              file=sys.stderr)  # fmt: skip
    errors = sum(row.get("error") is not None for row in store.rows())
    print(f"haic caption: {args.output}: {len(store.done)} rows, {len(store.done) - errors} "
          f"answered, {errors} errors, in {len(store.shard_files())} shards",
          file=sys.stderr)  # fmt: skip
    return 0 if errors == 0 else 1
