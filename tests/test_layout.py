"""The package's layout holds (docs/syncer-design.md): no import circles between modules
(deferred and TYPE_CHECKING imports count), no module past 1,000 lines but the RDB parser,
and the sync engine imports nothing of what sits above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "replwatch"
MAX_LINES = 1000
LONG_ALLOWED = {"replwatch.sync.rdb"}  # a cohesive parser
# what the engine must never import: the daemon side of tasks, the tools and the daemon
ABOVE_THE_ENGINE = (
    "replwatch.tasks",
    "replwatch.compare",
    "replwatch.exporter",
    "replwatch.app",
    "replwatch.cli",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [base, *(f"{base}.{a.name}" for a in node.names)]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    names = set(known)
    return {name: imports_of(name, path, names) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_circles_are_found() -> None:
    """(The check itself: a circle of three and one of two, beside a chain.)"""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(circles(edges)) == [["a", "b", "c"], ["d", "e"]]


def test_no_import_circles() -> None:
    assert circles(graph()) == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_too_long(name: str) -> None:
    lines = len(modules()[name].read_text(encoding="utf-8").splitlines())
    assert name in LONG_ALLOWED or lines <= MAX_LINES, f"{name}: {lines} lines"


def test_the_engine_imports_nothing_above_it() -> None:
    edges = graph()
    wrong = {
        (name, target)
        for name, targets in edges.items()
        if name.startswith("replwatch.sync")
        for target in targets
        if target.startswith(ABOVE_THE_ENGINE)
    }
    assert wrong == set()
