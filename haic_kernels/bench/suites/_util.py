"""Helpers every suite needs: import the op lazily, probe whether a backend runs here.

A suite must still list its cases when the op cannot be imported or a backend cannot run: a case
whose backend is unavailable carries ``skip_reason``; an import that fails for another reason
(a bug, not an absence) becomes a case that raises, so it is reported as failed, not hidden.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["load_op", "probe", "raiser", "unavailable_error"]


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
