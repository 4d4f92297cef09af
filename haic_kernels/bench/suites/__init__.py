"""Benchmark suites: one module per op, found by name, imported only when used.

A suite is a module ``haic_kernels/bench/suites/<name>.py`` that defines

    def cases(size: str, device: torch.device) -> list[Case]
        # size is "tiny" (small shapes, seconds on a CPU) or "full" (the real model's shapes)

and a one-line module docstring (shown by ``haic bench --list``). Adding an op's benchmark means
adding that one module (and benchmarks/bench_<name>.py for pytest-benchmark): the name -> module
mapping below is read from this folder, so nothing else needs an edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch


def _discover() -> dict[str, str]:
    here = Path(__file__).parent
    return {
        m.name: f"{__name__}.{m.name}"
        for m in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name)
        if not m.name.startswith("_")
    }


#: suite name -> module path (nothing imported until `get_suite`).
SUITES: dict[str, str] = _discover()


def names() -> list[str]:
    return list(SUITES)


def check_name(name: str) -> None:
    """ValueError listing the known suites if ``name`` is not one of them."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; known suites: {', '.join(SUITES) or '(none)'}")


def get_suite(name: str) -> ModuleType:
    """The suite module called ``name`` (imported now); ValueError if unknown."""
    check_name(name)
    return importlib.import_module(SUITES[name])


def describe(name: str) -> str:
    """The first line of the suite module's docstring."""
    doc = (get_suite(name).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def resolve(requested: Sequence[str]) -> list[str]:
    """Expand 'all' and check names; keeps order, drops repeats."""
    out: list[str] = []
    for n in requested:
        for m in names() if n == "all" else [n]:
            check_name(m)
            if m not in out:
                out.append(m)
    return out


def cases(name: str, size: str, device: torch.device | str) -> list:
    """The cases of suite ``name`` at ``size`` ('tiny', 'full' or 'all') on ``device``."""
    device = torch.device(device)
    sizes = ("tiny", "full") if size == "all" else (size,)
    mod = get_suite(name)
    return [c for s in sizes for c in mod.cases(s, device)]
