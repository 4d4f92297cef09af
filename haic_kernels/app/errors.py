"""How every `haic` command reports a problem the user can fix: one line, a documented status.

A command raises `CommandError` (or lets a `CheckpointError` escape); `cli.main` prints
``haic COMMAND: error: <one line>`` on stderr and returns the status below. Nothing a user
can cause by an argument, a file or a checkpoint should reach the user as a traceback.

`CommandError` is a `SystemExit`, so code that calls the app helpers outside `cli.main` (a
script, another command) still stops without a traceback (Python prints the message, status 1).
"""

from __future__ import annotations

__all__ = [
    "EXIT_CHECKPOINT",
    "EXIT_CODES_HELP",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "CommandError",
    "checkpoint_error",
    "failed",
    "one_line",
    "usage_error",
]

EXIT_OK = 0
#: The command ran but could not do its job on the data: a video or image that cannot be read,
#: a manifest with failed videos, a parity run that breaks the rule.
EXIT_FAILED = 1
#: The command line: an option's value or combination, an input path that does not exist or is
#: not a file, an output path whose folder is missing, a device this machine lacks, a prompt plus
#: --max-new-tokens past the model's context. Checked before any model is built.
EXIT_USAGE = 2
#: The checkpoint or the installation: config.json, generation_config.json, tokenizer.json or the
#: weights cannot be used as they are, or a package needed to read them is missing.
EXIT_CHECKPOINT = 3
#: Ctrl-C.
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit status:
  0    success
  1    the input could not be answered (an unreadable video or image, a manifest with failed
       videos, `haic parity`: a stage breaks the parity rule)
  2    usage error: a bad option value or combination, a missing input path or one that is not
       a file, an output folder that does not exist, an unknown or absent device, a prompt plus
       --max-new-tokens past the model's context (all checked before a model is built)
  3    checkpoint error: config.json / generation_config.json / tokenizer.json / weights that
       cannot be used, or a package needed to read them is not installed
  130  interrupted (Ctrl-C)
every error is one line on stderr: "haic COMMAND: error: ..." naming the option or file"""


def one_line(message: object) -> str:
    """``message`` on one line: its lines joined with "; " (a listing of weights stays whole)."""
    parts = [p.strip() for p in str(message).splitlines()]
    return "; ".join(p for p in parts if p).replace(":;", ":")


class CommandError(SystemExit):
    """A problem the user can fix: ``message`` (one line) and the exit ``status``."""

    def __init__(self, message: object, status: int = EXIT_USAGE) -> None:
        self.message = one_line(message)
        self.status = status
        super().__init__(self.message)


def usage_error(message: object) -> CommandError:
    """A `CommandError` with `EXIT_USAGE` (name the option at fault in ``message``)."""
    return CommandError(message, EXIT_USAGE)


def checkpoint_error(message: object) -> CommandError:
    """A `CommandError` with `EXIT_CHECKPOINT`."""
    return CommandError(message, EXIT_CHECKPOINT)


def failed(message: object) -> CommandError:
    """A `CommandError` with `EXIT_FAILED` (the input could not be answered)."""
    return CommandError(message, EXIT_FAILED)
