"""The worker's modules stay small and import each other without cycles: the graph is read
from every import statement in the package (function-level ones too), not from a run."""

from __future__ import annotations

import ast
import os

import atelier_worker

PACKAGE = "atelier_worker"
ROOT = os.path.dirname(atelier_worker.__file__)
MAX_LINES = 600


def _modules() -> dict[str, str]:
    """Module name -> file, for every .py file of the package."""
    out = {}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(folder, ROOT)
        parts = [PACKAGE] + ([] if rel == "." else rel.split(os.sep))
        for f in files:
            if f.endswith(".py"):
                name = parts if f == "__init__.py" else parts + [f[:-3]]
                out[".".join(name)] = os.path.join(folder, f)
    return out


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The package's modules that module `name` imports."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from . import x` names a module when x is one, else something of the package.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules, or [] when there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def test_the_graph_sees_the_imports_it_must():
    graph = _graph()
    # A relative import, a function-level one, one of a subpackage, one from a subpackage
    # up to the package.
    assert "atelier_worker.protocol" in graph["atelier_worker.worker"]
    assert "atelier_worker.engine" in graph["atelier_worker.worker"]
    assert "atelier_worker.engine.checks" in graph["atelier_worker.engine.engine"]
    assert "atelier_worker.tiny" in graph["atelier_worker.engine.checks"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_worker_modules():
    # A package's __init__ is a node like any module, reached only by importing from the
    # package itself: the implicit run of the parent's __init__ before a submodule is no
    # edge, or every package that re-exports one of its modules would be a cycle.
    assert _cycle(_graph()) == []


def test_no_worker_module_is_over_600_lines():
    long = {}
    for name, path in _modules().items():
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > MAX_LINES:
            long[name] = n
    assert not long, f"split these modules (at most {MAX_LINES} lines each): {long}"
