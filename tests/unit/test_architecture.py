"""The layering the code promises (README, Development): checked on the source, by AST.

- Protocol code (SSH, HTTP, the web proxy, the CLI, ``broker serve``) reaches the database
  only through ``broker.services``: no ``sqlmodel``/``sqlalchemy`` import there.
  Nor do they open a database session themselves (``ctx.store.session()``).
- No import cycle between the broker's modules, function-level imports included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import broker

ROOT = Path(broker.__file__).resolve().parent
PROTOCOL_LAYERS = ("ssh", "http", "webproxy", "cli", "server.py", "supervisor.py", "worker.py",
                   "storage_guard.py")
ORM_PACKAGES = ("sqlmodel", "sqlalchemy")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported name) of every import in a file, at any depth, relative ones resolved
    to absolute; ``from pkg import mod`` names ``pkg.mod`` when that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = _module_name(path) if path.name == "__init__.py" else \
        _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in \
                    MODULES else base


def _broker_module(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = {_broker_module(imported) for _, imported in _imports(path)}
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_protocol_layers_reach_the_database_only_through_services() -> None:
    offenders = []
    for path in _protocol_files():
        for line, imported in _imports(path):
            if imported.split(".")[0] in ORM_PACKAGES:
                offenders.append(f"{path.relative_to(ROOT.parent)}:{line}: {imported}")
    assert offenders == []


def _protocol_files() -> Iterator[Path]:
    for layer in PROTOCOL_LAYERS:
        target = ROOT / layer
        yield from [target] if target.is_file() else sorted(target.rglob("*.py"))


def test_protocol_layers_open_no_database_session() -> None:
    offenders = []
    for path in _protocol_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr in ("session", "engine")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "store"):
                offenders.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}")
    assert offenders == []


def test_no_import_cycles_between_modules() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_function_level_imports_count() -> None:
    imported = {name for _, name in _imports(ROOT / "cli" / "admin.py")}
    assert "broker.demo.run" in imported  # imported inside the demo command only
