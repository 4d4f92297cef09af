"""Where a benchmark ran: device, library versions and source commit (no host name).

Everything here tolerates absence: no GPU, no Triton, no nvidia-smi, no git or no commit yet
each give None for that field rather than an error.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

# The repository root: haic_kernels/bench/env.py -> parents[2].
REPO_ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def trust_fast_paths() -> Iterator[str]:
    """While inside, ``backend="auto"`` may choose fast paths not yet verified on this GPU
    (HAIC_TRUST_UNVERIFIED=1 unless the caller set it; restored on exit): a benchmark of the
    fast model should not time the PyTorch fallbacks auto otherwise picks. Yields the value."""
    before = os.environ.get("HAIC_TRUST_UNVERIFIED")
    os.environ.setdefault("HAIC_TRUST_UNVERIFIED", "1")
    try:
        yield os.environ["HAIC_TRUST_UNVERIFIED"]
    finally:
        if before is None:
            os.environ.pop("HAIC_TRUST_UNVERIFIED", None)


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 10.0) -> str | None:
    try:
        out = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_info(repo: Path | str | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` for the repository at ``repo``.

    Dirty means tracked files differ from the commit (untracked files are not counted); with no
    git or no commit yet, both fields are None.
    """
    repo = Path(repo) if repo is not None else REPO_ROOT
    commit = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    if not commit:
        return {"commit": None, "dirty": None}
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi, or None."""
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: torch.device | str) -> dict[str, Any]:
    """Name and, on CUDA, capability, multiprocessors, L2 and memory of ``device``."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"type": device.type, "name": _cpu_name(), "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    return {
        "type": "cuda",
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "l2_bytes": int(getattr(props, "L2_cache_size", 0) or 0),
        "memory_bytes": int(props.total_memory),
    }


def collect_env(device: torch.device | str = "cpu", repo: Path | str | None = None) -> dict:
    """Everything needed to compare two result files, as a JSON-ready dict."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    return {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(device),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda_runtime": torch.version.cuda,
        "driver": driver_version() if cuda else None,
        "haic_kernels": _version("haic_kernels"),
        "git": git_info(repo),
    }
