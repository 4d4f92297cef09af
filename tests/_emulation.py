"""Build and run a CUDA kernel's host emulation (csrc/emu): g++ compiles the unchanged .cu file
against the shim headers in csrc/emu/include, with a driver that runs CUDA threads as host
threads and checks the results itself. UBSan's alignment check catches misaligned vector
accesses where libubsan exists."""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@cache
def cxx20() -> str | None:
    """A C++ compiler with C++20 and <barrier>, or None."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("g++")
    if cxx is None:
        return None
    probe = subprocess.run(
        [cxx, "-std=c++20", "-x", "c++", "-fsyntax-only", "-"],
        input="#include <barrier>\nint main() {}\n",
        capture_output=True,
        text=True,
        check=False,
    )
    return cxx if probe.returncode == 0 else None


def run_emulation(tmp_path: Path, kernel: str, driver: str, *, timeout: float = 300) -> str:
    """Compile csrc/<kernel> with csrc/emu/<driver>, run it, return its stdout.

    Skips when no suitable compiler exists; fails if the build or the run fails.
    """
    cxx = cxx20()
    if cxx is None:
        pytest.skip("needs a C++20 compiler with <barrier> (g++ >= 11)")
    exe = tmp_path / Path(driver).stem
    cmd = [
        cxx,
        "-std=c++20",
        "-O1",
        "-pthread",
        "-Wall",
        "-Wno-unknown-pragmas",
        f"-I{ROOT / 'csrc' / 'emu' / 'include'}",
        f"-I{ROOT / 'csrc'}",
        "-x",
        "c++",
        str(ROOT / "csrc" / kernel),
        "-x",
        "c++",
        str(ROOT / "csrc" / "emu" / driver),
        "-o",
        str(exe),
    ]
    ubsan = ["-fsanitize=alignment", "-fno-sanitize-recover=all"]
    build = subprocess.run([cmd[0], *ubsan, *cmd[1:]], capture_output=True, text=True)
    if build.returncode != 0 and "sanitize" in build.stderr:
        build = subprocess.run(cmd, capture_output=True, text=True)  # no libubsan here
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout
