"""Lazy access to the compiled CUDA extension ``haic_kernels._C``, and its build configuration.

This file imports nothing but the standard library at module level: setup.py loads it by path
(without importing the package, so a build needs no torch) to parse ``HAIC_CUDA_ARCHS``, and
backends.py uses it to say why the extension is or is not there.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from functools import cache
from types import ModuleType

EXT_NAME = "haic_kernels._C"

# Ampere (A100) and Hopper (H100/H200). sm_90a, not sm_90: the arch-specific target is what
# unlocks wgmma/setmaxnreg for later GEMM kernels, and a cubin for it runs on every sm_90 part.
DEFAULT_CUDA_ARCHS = "80;90a"

_ARCH_RE = re.compile(r"^(?:sm_|compute_)?(\d+)\.?(\d)([af]?)(\+ptx)?$", re.IGNORECASE)


def parse_cuda_archs(spec: str) -> list[tuple[str, bool]]:
    """Parse an arch list such as ``"80;90a"``, ``"8.0;9.0a"``, ``"sm_80,sm_90a"`` or ``"90+PTX"``.

    Returns ``[(arch, with_ptx)]`` with ``arch`` like ``"80"`` or ``"90a"``; ``with_ptx`` asks for
    PTX as well as the cubin (so newer GPUs can JIT it). Separators: ``;``, ``,`` or spaces.
    Raises ValueError naming the bad entry.
    """
    out: list[tuple[str, bool]] = []
    for raw in re.split(r"[;,\s]+", spec.strip()):
        if not raw:
            continue
        m = _ARCH_RE.match(raw)
        if m is None:
            raise ValueError(
                f"HAIC_CUDA_ARCHS: cannot parse {raw!r}; expected entries like '80', '90a', "
                "'8.0', '9.0a', 'sm_90a' or '90+PTX', separated by ';'"
            )
        major, minor, suffix, ptx = m.groups()
        arch = f"{major}{minor}{suffix.lower()}"
        if (arch, bool(ptx)) not in out:
            out.append((arch, bool(ptx)))
    if not out:
        raise ValueError(f"HAIC_CUDA_ARCHS: no architectures in {spec!r}")
    return out


def gencode_flags(spec: str) -> list[str]:
    """nvcc ``-gencode`` flags for an arch list (see `parse_cuda_archs`)."""
    flags = []
    for arch, ptx in parse_cuda_archs(spec):
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{arch},code=compute_{arch}")
    return flags


def arch_names(spec: str) -> list[str]:
    """What ``_C.compiled_archs()`` reports for an arch list: ``["sm_80", "sm_90a"]``."""
    names = []
    for arch, ptx in parse_cuda_archs(spec):
        names.append(f"sm_{arch}")
        if ptx:
            names.append(f"compute_{arch}")
    return names


def arch_runs_on(arch: str, capability: tuple[int, int]) -> bool:
    """Whether code built for ``arch`` (``sm_80``, ``sm_90a``, ``compute_90``) runs on a device.

    A cubin runs on the same major version with an equal or higher minor (sm_80 on sm_86); an
    arch-specific cubin (``sm_90a``) only on exactly that version; PTX on any later device.
    """
    m = re.match(r"^(sm|compute)_(\d+)(\d)([af]?)$", arch)
    if m is None:
        return False
    kind, major, minor, suffix = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    dev_major, dev_minor = capability
    if kind == "compute":
        return (dev_major, dev_minor) >= (major, minor)
    if suffix:
        return (dev_major, dev_minor) == (major, minor)
    return dev_major == major and dev_minor >= minor


@cache
def _load() -> tuple[ModuleType | None, str]:
    if importlib.util.find_spec(EXT_NAME) is None:
        return None, (
            "not built: nvcc was not found at install time, or HAIC_SKIP_CUDA_BUILD=1 was set "
            "(reinstall with nvcc on PATH or CUDA_HOME set)"
        )
    try:
        return importlib.import_module(EXT_NAME), ""
    except ImportError as e:  # built, but cannot load (missing symbol, wrong Python, ...)
        return None, f"built but failed to import: {e}"


def load() -> ModuleType | None:
    """``haic_kernels._C`` if it imports, else None (cached; see `load_error`)."""
    return _load()[0]


def load_error() -> str:
    """Why `load` returned None ("" when it did not)."""
    return _load()[1]
