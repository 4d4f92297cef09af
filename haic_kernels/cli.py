"""`haic`: the command line. Subcommands: info, demo, run, parity, bench.

Each subcommand imports what it needs when it runs, so `haic info` works on a machine with only
torch installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import torch

    from . import __version__, backends

    print(
        f"haic_kernels {__version__} | torch {torch.__version__} | "
        f"python {platform.python_version()} | {platform.machine()}"
    )
    rows = [
        (b.name, "usable" if b.usable else "no", b.version or "-", b.reason)
        for b in backends.all_backends()
    ]
    widths = [
        max(len(r[i]) for r in [("backend", "status", "version", ""), *rows]) for i in range(3)
    ]
    print(f"{'backend':<{widths[0]}}  {'status':<{widths[1]}}  {'version':<{widths[2]}}  detail")
    for name, status, version, reason in rows:
        print(f"{name:<{widths[0]}}  {status:<{widths[1]}}  {version:<{widths[2]}}  {reason}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from .run import run_manifest

    return run_manifest(args)


def _cmd_parity(args: argparse.Namespace) -> int:
    from .parity import parity_command

    return parity_command(args)


def _cmd_bench(argv: list[str]) -> int:
    from .bench.cli import main as bench_main

    return bench_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haic",
        description="haic_kernels: fast CogVLM2-Video inference kernels and their reference model.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="list each backend and whether it is usable here, with why")
    info.set_defaults(func=_cmd_info)

    from .demo import add_demo_arguments

    demo = sub.add_parser(
        "demo",
        help="run the model end to end on the bundled clip (tiny config, random weights)",
        description="Decode a clip, sample frames, run the model and greedy-decode a few tokens, "
        "printing each stage's time. Random weights give meaningless text; --checkpoint DIR "
        "loads real weights.",
    )
    add_demo_arguments(demo)
    demo.set_defaults(func=_cmd_demo)

    from .run import add_run_arguments

    run = sub.add_parser(
        "run",
        help="answer a question about a video (VIDEO) or each video of a manifest (--manifest)",
        description="VIDEO: decode it (DALI on a GPU, PyAV otherwise), run the model (the fast "
        "model on a GPU, the reference on a CPU) and print the answer with each stage's time and "
        "the peak GPU memory. --manifest: decode the videos of a JSON-lines manifest in batches "
        "and write one JSON line per video (answer, token ids, timings, or the error); "
        "--shard-id/--num-shards split the manifest across processes.",
    )
    add_run_arguments(run)
    run.set_defaults(func=_cmd_run)

    from .parity import add_parity_arguments

    parity = sub.add_parser(
        "parity",
        help="check the fast model against the reference, stage by stage",
        description="Build the reference model, the fast model and a float64 oracle from one "
        "state dict (seeded random weights or --checkpoint), run them on the same frames and "
        "prompts, and print each stage's max/mean relative error (patch embed, vision blocks, "
        "adapter, LM layers, logits) and whether greedy tokens match. Exit status 1 if a stage "
        "breaks the parity rule (fast error > 2x the same-dtype reference's error + atol) or the "
        "tokens differ.",
    )
    add_parity_arguments(parity)
    parity.set_defaults(func=_cmd_parity)

    # `bench` owns its own parser (haic_kernels/bench/cli.py); registered here for --help only.
    sub.add_parser(
        "bench", help="run benchmark suites and print a comparison table", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
