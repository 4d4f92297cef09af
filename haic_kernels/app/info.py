"""`haic info`: each backend and whether it is usable here, with the reason when it is not."""

from __future__ import annotations

import argparse
import platform

import torch

from .. import __version__, backends

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "list each backend and whether it is usable here, with why"
DESCRIPTION = HELP


def add_arguments(p: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    print(
        f"haic_kernels {__version__} | torch {torch.__version__} | "
        f"python {platform.python_version()} | {platform.machine()}"
    )
    rows = [
        (b.name, "usable" if b.usable else "no", b.version or "-", b.reason)
        for b in backends.all_backends()
    ]
    head = ("backend", "status", "version", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    for name, status, version, reason in [(*head[:3], "detail"), *rows]:
        print(f"{name:<{widths[0]}}  {status:<{widths[1]}}  {version:<{widths[2]}}  {reason}")
    return 0
