"""`haic`: the command line. One module per command, registered in `COMMANDS`.

A command module has ``HELP`` (one line), ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> exit status``; adding a command is one module and one line here. ``haic bench``
keeps its own parser (``haic_kernels/bench/cli.py``); this module only dispatches to it.

Errors (`errors`): a bad argument, a `CommandError` or a `CheckpointError` from any command is
printed as one line, ``haic COMMAND: error: ...``, and `main` returns its documented status
(`errors.EXIT_CODES_HELP`, also in ``haic --help``); Ctrl-C returns 130 without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from ..backends import BackendUnavailable
from ..bench import cli as bench_cli
from ..models.cogvlm2.checkpoint_layout import CheckpointError
from . import chat, demo, info, parity, run
from .caption import command as caption
from .errors import (
    EXIT_CHECKPOINT,
    EXIT_CODES_HELP,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CommandError,
    one_line,
)

__all__ = ["COMMANDS", "Parser", "build_parser", "main"]

COMMANDS: dict[str, ModuleType] = {
    "info": info,
    "demo": demo,
    "run": run,
    "chat": chat,
    "parity": parity,
    "caption": caption,
}


class Parser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose usage errors are one line (`CommandError`, status 2)
    instead of the usage text plus the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CommandError(f"{message} (see {self.prog} --help)", EXIT_USAGE)


class _Formatter(argparse.HelpFormatter):
    """Descriptions wrapped as usual; the exit-status epilog kept as written (a table)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text == EXIT_CODES_HELP:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="haic",
        description="haic_kernels: fast CogVLM2-Video inference kernels and their reference model.",
        epilog=EXIT_CODES_HELP,
        formatter_class=_Formatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.DESCRIPTION,
                           epilog=EXIT_CODES_HELP,
                           formatter_class=_Formatter)  # fmt: skip
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    # `bench` owns its own parser; registered here for --help only.
    sub.add_parser("bench", help="run benchmark suites and print a comparison table",
                   add_help=False)  # fmt: skip
    return parser


def _report(prog: str, message: str) -> None:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return bench_cli.main(argv[1:])
    prog = f"haic {argv[0]}" if argv and argv[0] in COMMANDS else "haic"
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except CommandError as e:
        _report(prog, e.message)
        return e.status
    except CheckpointError as e:  # a checkpoint problem a command did not wrap: still one line
        _report(prog, str(e))
        return EXIT_CHECKPOINT
    except BackendUnavailable as e:  # an explicit --backend this machine cannot run
        _report(prog, f"--backend: {e}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
