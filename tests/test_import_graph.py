"""The package's import graph, read statically (ast) from every file under haic_kernels/.

Every ``import`` counts, module-level or inside a function (a function-level import hides a
cycle from the interpreter, not from this test). Two checks: no cycles between modules, and
imports flow one way through the layers of DESIGN.md (app -> models / video / bench -> pruning
-> ops -> _common / backends, with tokens and constants as leaves).
"""

from __future__ import annotations

import ast
from pathlib import Path

import haic_kernels

ROOT = Path(haic_kernels.__file__).parent
PACKAGE = "haic_kernels"

# Lower rank = lower layer; a module may import modules of its rank or below only. Resolved by
# the longest matching prefix, so a subpackage can sit below its parent package.
RANKS = {
    "haic_kernels.constants": 0,
    "haic_kernels.tokens": 0,
    "haic_kernels._ext": 0,
    "haic_kernels.backends": 1,
    "haic_kernels.ops": 2,
    "haic_kernels.testing": 2,  # the package and the rule: torch only (op tests, bench suites)
    "haic_kernels.testing.fp8_parity": 6,
    "haic_kernels.testing.model_parity": 6,
    "haic_kernels.testing.prune_scores": 6,
    "haic_kernels.testing.reduction_report": 6,
    "haic_kernels": 3,  # the root: the public functional API (ops, pruning)
    "haic_kernels._aot_check": 3,
    "haic_kernels.pruning": 3,
    "haic_kernels.models": 4,
    "haic_kernels.video": 4,
    "haic_kernels.bench": 5,
    "haic_kernels.app": 7,
    "haic_kernels.__main__": 8,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The in-package modules ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        for t in targets:
            while t and t not in modules:  # ``import a.b.c`` of a non-module attribute
                t = t.rpartition(".")[0]
            if t.startswith(PACKAGE) and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _rank(name: str) -> int:
    key = max((k for k in RANKS if name == k or name.startswith(k + ".")), key=len)
    return RANKS[key]


def test_the_graph_is_read() -> None:
    graph = _graph()
    fast = "haic_kernels.models.cogvlm2.fast"
    assert f"{fast}.prune" in graph[f"{fast}.prefill"]
    # function-level imports count (lazy imports of in-tree modules in a benchmark suite)
    assert "haic_kernels.models.cogvlm2.fast.layers" in graph["haic_kernels.bench.suites.lm_layer"]


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_imports_flow_down_the_layers() -> None:
    upward = [
        f"{a} ({_rank(a)}) imports {b} ({_rank(b)})"
        for a, deps in _graph().items()
        for b in deps
        if _rank(b) > _rank(a)
    ]
    assert upward == [], "upward imports:\n" + "\n".join(sorted(upward))
