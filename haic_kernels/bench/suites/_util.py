"""Helpers every suite needs: import the op lazily, probe whether a backend runs here.

A suite must still list its cases when the op cannot be imported or a backend cannot run: a case
whose backend is unavailable carries ``skip_reason``; an import that fails for another reason
(a bug, not an absence) becomes a case that raises, so it is reported as failed, not hidden.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["compiled", "load_op", "probe", "raiser", "row_op_cases", "unavailable_error"]


def load_op(module: str, attr: str) -> tuple[Any | None, str | None, BaseException | None]:
    """(``module.attr``, skip reason, error): the reason when the module is absent, the error
    when importing it raised something other than ImportError."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        return None, f"{module} is not importable here ({type(exc).__name__}: {exc})", None
    except Exception as exc:
        return None, None, exc
    return getattr(mod, attr), None, None


def unavailable_error() -> type[Exception]:
    """The exception ops raise for an explicit backend that cannot run here."""
    try:
        from haic_kernels.backends import BackendUnavailable
    except ImportError:
        return RuntimeError
    return BackendUnavailable


_probe_cache: dict[Any, str | None] = {}


def probe(key: Any, call: Callable[[], Any]) -> str | None:
    """Run ``call`` once per ``key``: the message if it raised BackendUnavailable, else None.

    Any other exception is not a reason to skip: the case then runs and is reported as failed.
    """
    if key not in _probe_cache:
        try:
            call()
            _probe_cache[key] = None
        except unavailable_error() as exc:
            _probe_cache[key] = str(exc)
        except Exception:
            _probe_cache[key] = None
    return _probe_cache[key]


def raiser(module: str, exc: BaseException) -> Callable[..., Any]:
    """A case function that re-raises the import error of ``module`` when timed."""

    def fn(*_: Any) -> Any:
        raise RuntimeError(f"importing {module} failed: {type(exc).__name__}: {exc}") from exc

    return fn


_compiled: dict[Callable[..., Any], Callable[..., Any]] = {}


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` through torch.compile, compiled on first use, once per process."""

    def call(*args: Any) -> Any:
        if fn not in _compiled:
            import torch

            _compiled[fn] = torch.compile(fn)
        return _compiled[fn](*args)

    return call


def row_op_cases(
    suite: str,
    rows: list[tuple[str, str, int, int, Any]],
    device: Any,
    *,
    op_module: str,
    eager: dict[str, Callable[..., Any]],
    backends: dict[str, tuple[str, ...]],
    op_fn: Callable[[Any, str, str], Callable[..., Any]],
    factory: Callable[[str, int, int, Any], Callable[[Any], tuple[Any, ...]]],
    counts: Callable[[str, int, int, Any], tuple[int, int]],
    check: Callable[[str, str], Callable[[Any, tuple[Any, ...]], None]],
    width: str,
) -> list:
    """The cases of a row-wise op suite (norm, activation): per ``(name, kind, T, width, dtype)``
    row, "torch eager" (``eager[kind]``) and "torch.compile" baselines, then each backend of
    ``backends[kind]`` through ``op_fn(op_api, kind, backend)``, probed on a small input."""
    from haic_kernels.bench.runner import Case

    op, op_skip, op_error = load_op(op_module, "api")
    out: list = []
    for name, kind, t, w, dtype in rows:
        flops, nbytes = counts(kind, t, w, dtype)
        common = dict(
            suite=suite, name=name, shapes={"T": t, width: w}, flops=flops, bytes=nbytes,
            dtype=str(dtype).removeprefix("torch."), make_inputs=factory(kind, t, w, dtype),
            cuda_graph=t <= 8,  # a few microseconds: time graph replays, not launch gaps
        )  # fmt: skip
        out.append(Case(backend="torch eager", fn=eager[kind], baseline=True, **common))
        out.append(Case(backend="torch.compile", fn=compiled(eager[kind]), baseline=True,
                        check=check(f"{suite} compile {name}", kind), **common))  # fmt: skip
        for b in backends[kind]:
            if op_error is not None:
                out.append(Case(backend=b, fn=raiser(op_module, op_error), **common))
                continue
            fn = op_fn(op, kind, b)
            skip = op_skip
            if skip is None:
                probe_in = factory(kind, 2, 64, dtype)(device)
                skip = probe((suite, kind, b, str(device), dtype), lambda f=fn, a=probe_in: f(*a))
            out.append(Case(backend=b, fn=fn, skip_reason=skip,
                            check=check(f"{suite} {b} {name}", kind), **common))  # fmt: skip
    return out
