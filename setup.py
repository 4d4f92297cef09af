"""Build script: the pure-Python package, plus the CUDA extension ``haic_kernels._C`` when it can.

Metadata lives in pyproject.toml; this file only decides about the extension.

- nvcc found (PATH, then $CUDA_HOME/bin, then $CUDA_PATH/bin) and HAIC_SKIP_CUDA_BUILD unset:
  every csrc/*.cu is compiled by nvcc (in parallel, alongside the C++ bindings) and linked with
  csrc/bindings.cpp into the pybind11 module ``haic_kernels._C``. The CUDA runtime is linked
  statically, so the module imports on machines without a GPU or driver. If compilation fails,
  the install fails: CI relies on that to prove the sources build.
- otherwise: a pure-Python install (Triton and PyTorch backends only), with a note on stderr.

Environment:
  HAIC_CUDA_ARCHS       arch list, default "80;90a"; "8.0;9.0a", "sm_90a" and "90+PTX" also work
  HAIC_SKIP_CUDA_BUILD  "1" to skip the extension even when nvcc is present
  HAIC_NVCC_THREADS     nvcc --threads (compiles the archs of one .cu in parallel), default 2
  CUDA_HOME / CUDA_PATH where to look for nvcc when it is not on PATH
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"


def _load_ext_config():
    # haic_kernels/_ext.py is stdlib-only; load it by path so the build never imports torch.
    spec = importlib.util.spec_from_file_location("_haic_ext_config", ROOT / "haic_kernels/_ext.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _note(msg: str) -> None:
    print(f"haic_kernels setup: {msg}", file=sys.stderr)


def _find_nvcc() -> Path | None:
    found = shutil.which("nvcc")
    if found:
        return Path(found).resolve()
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return (Path(home) / "bin" / "nvcc").resolve()
    return None


def _cuda_home(nvcc: Path) -> Path:
    """The toolkit root: $CUDA_HOME, else nvcc's own TOP (nvcc may be a wrapper script)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "include" / "cuda_runtime_api.h").is_file():
            return Path(home).resolve()
    if (nvcc.parent.parent / "include" / "cuda_runtime_api.h").is_file():
        return nvcc.parent.parent
    proc = subprocess.run(
        [str(nvcc), "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("#$ TOP="):
            return Path(line.split("=", 1)[1].strip()).resolve()
    raise RuntimeError(
        f"haic_kernels: cannot locate the CUDA toolkit of {nvcc}; set CUDA_HOME, or "
        "HAIC_SKIP_CUDA_BUILD=1 to install without the CUDA extension"
    )


def _cuda_lib_dir(cuda_home: Path) -> Path:
    candidates = [cuda_home / "lib64", cuda_home / "lib"]
    candidates += sorted(cuda_home.glob("targets/*/lib"))
    for d in candidates:
        if (d / "libcudart_static.a").is_file():
            return d
    raise RuntimeError(
        f"haic_kernels: CUDA toolkit at {cuda_home} but libcudart_static.a is not under "
        f"{', '.join(str(c) for c in candidates)}; set HAIC_SKIP_CUDA_BUILD=1 to install without "
        "the CUDA extension"
    )


class CudaExtension(Extension):
    """An Extension whose ``cuda_sources`` are compiled by nvcc into extra objects."""

    def __init__(self, name: str, sources: list[str], cuda_sources: list[str], **kw) -> None:
        super().__init__(name, sources, **kw)
        self.cuda_sources = cuda_sources


class BuildExt(build_ext):
    """build_ext that runs nvcc on ``cuda_sources`` while the C++ sources compile, then links.

    Works for regular wheels and for PEP 660 editable installs (setuptools then builds in place).
    """

    nvcc: Path
    nvcc_flags: list[str]

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CudaExtension) or not ext.cuda_sources:
            super().build_extension(ext)
            return
        obj_dir = Path(self.build_temp).resolve() / "nvcc"
        obj_dir.mkdir(parents=True, exist_ok=True)
        objects = [obj_dir / (Path(src).stem + ".o") for src in ext.cuda_sources]
        # nvcc jobs run in threads while setuptools compiles the C++ sources; the link waits.
        pool = ThreadPoolExecutor(max_workers=max(1, min(len(objects), os.cpu_count() or 1)))
        jobs = [pool.submit(self._nvcc, src, obj) for src, obj in zip(ext.cuda_sources, objects)]
        ext.extra_objects = [*ext.extra_objects, *map(str, objects)]
        compiler = self.compiler
        plain_link = compiler.link_shared_object

        def link_after_nvcc(*args, **kwargs):
            _wait(jobs)
            return plain_link(*args, **kwargs)

        compiler.link_shared_object = link_after_nvcc
        try:
            super().build_extension(ext)
        finally:
            compiler.link_shared_object = plain_link
            _wait(jobs)  # surfaces an nvcc failure even if the C++ compile failed first
            pool.shutdown()

    def _nvcc(self, src: str, obj: Path) -> None:
        cmd = [str(self.nvcc), "-c", str(ROOT / src), "-o", str(obj), *self.nvcc_flags]
        _note(" ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.stdout or proc.stderr:
            sys.stderr.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(
                f"haic_kernels: nvcc failed on {src} (exit {proc.returncode}); see the output "
                "above. Set HAIC_SKIP_CUDA_BUILD=1 to install without the CUDA extension."
            )


def _wait(jobs: list[Future]) -> None:
    for job in jobs:
        job.result()


def _remove_stale_inplace_ext() -> None:
    # An editable install imports from the source tree: a _C built by an earlier install would
    # otherwise outlive an install that was asked to go without it.
    if not {"editable_wheel", "develop"} & set(sys.argv):
        return
    for stale in (ROOT / "haic_kernels").glob("_C.*"):
        if stale.suffix in (".so", ".pyd"):
            stale.unlink()
            _note(f"removed {stale.name} left in the source tree by an earlier build")


def _cuda_extension() -> tuple[list[Extension], dict]:
    if os.environ.get("HAIC_SKIP_CUDA_BUILD", "") not in ("", "0"):
        _note("HAIC_SKIP_CUDA_BUILD is set: installing without the CUDA extension haic_kernels._C")
        _remove_stale_inplace_ext()
        return [], {}
    nvcc = _find_nvcc()
    if nvcc is None:
        _note(
            "nvcc not found (PATH, CUDA_HOME, CUDA_PATH): installing the pure-Python package "
            "without haic_kernels._C; the Triton and PyTorch backends still work"
        )
        _remove_stale_inplace_ext()
        return [], {}

    import pybind11  # a build requirement (pyproject.toml); only needed for the extension

    cfg = _load_ext_config()
    arch_spec = os.environ.get("HAIC_CUDA_ARCHS", cfg.DEFAULT_CUDA_ARCHS)
    gencode = cfg.gencode_flags(arch_spec)
    archs = ",".join(cfg.arch_names(arch_spec))
    cuda_home = _cuda_home(nvcc)
    lib_dir = _cuda_lib_dir(cuda_home)
    _note(f"building haic_kernels._C with {nvcc} for {archs}")

    cuda_sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cu"))
    cpp_sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cpp"))
    threads = os.environ.get("HAIC_NVCC_THREADS", "2")
    BuildExt.nvcc = nvcc
    BuildExt.nvcc_flags = [
        "-O3",
        "-std=c++17",
        "-lineinfo",
        "-Xcompiler=-fPIC,-fvisibility=hidden",
        f"--threads={threads}",
        f"-I{CSRC}",
        *gencode,
    ]
    ext = CudaExtension(
        "haic_kernels._C",
        sources=cpp_sources,
        cuda_sources=cuda_sources,
        include_dirs=[str(CSRC), str(cuda_home / "include"), pybind11.get_include()],
        define_macros=[("HAIC_CUDA_ARCHS", f'"{archs}"')],
        extra_compile_args=["-std=c++17", "-g0", "-fvisibility=hidden"],
        library_dirs=[str(lib_dir)],
        # Static runtime: the module must import where there is no libcudart (CPU-only CI).
        libraries=["cudart_static", "dl", "rt", "pthread"],
        language="c++",
        depends=[str(p.relative_to(ROOT)) for p in CSRC.glob("*.h*")],
    )
    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = _cuda_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
