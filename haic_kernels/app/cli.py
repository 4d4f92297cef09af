"""`haic`: the command line. One module per command, registered in `COMMANDS`.

A command module has ``HELP`` (one line), ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> exit status``; adding a command is one module and one line here. ``haic bench``
keeps its own parser (``haic_kernels/bench/cli.py``); this module only dispatches to it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from ..bench import cli as bench_cli
from . import demo, info, parity, run
from .caption import command as caption

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: dict[str, ModuleType] = {
    "info": info, "demo": demo, "run": run, "parity": parity, "caption": caption,
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="haic",
        description="haic_kernels: fast CogVLM2-Video inference kernels and their reference model.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    # `bench` owns its own parser; registered here for --help only.
    sub.add_parser("bench", help="run benchmark suites and print a comparison table",
                   add_help=False)  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return bench_cli.main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
