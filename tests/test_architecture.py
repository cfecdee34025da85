"""The shape of the code (docs/architecture.md), checked so that it stays.

Imports are read with ``ast`` from every module of ``shipway`` and ``workers``,
including imports inside functions; imports under ``if TYPE_CHECKING:`` and those of
the all-tables registry ``shipway.models`` (which migrations read) are left aside.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = (ROOT / "src" / "shipway", ROOT / "workers")
REGISTRY = "shipway.models"

# The job engine's own packages may import only these (core and adapters).
ENGINE_MAY_IMPORT = {
    "shipway",
    "config",
    "db",
    "errors",
    "ids",
    "schemas",
    "states",
    "storage",
    "events",
    "jobs",
    "sources",
    "idempotency",
}
ENTRY_POINTS = {"api", "cli", "bootstrap", "embedded", "workers", "migrate", "migrations"}
MAX_MODULE_LINES = 400
MAX_ROUTE_BODY_LINES = 15


@dataclass(frozen=True)
class Import:
    """One import statement: in which module and file, of which module."""

    module: str
    path: Path
    line: int
    target: str


def module_name(path: Path) -> str:
    """Dotted name of a source file (``shipway.jobs.relay``, ``workers.tasks``)."""
    base = ROOT / "src" if path.is_relative_to(ROOT / "src") else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(module: str) -> str:
    """The package a module belongs to: ``jobs`` for shipway.jobs.x, ``workers`` for workers.*."""
    parts = module.split(".")
    if parts[0] == "workers":
        return "workers"
    return parts[1] if len(parts) > 1 else "shipway"


def source_files() -> Iterator[Path]:
    """Every Python file of shipway and workers, migration versions aside."""
    for folder in SOURCES:
        for path in sorted(folder.rglob("*.py")):
            if "versions" in path.parts and "migrations" in path.parts:
                continue
            yield path


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(child) for child in ast.walk(node))
    return hidden


def imports_of(path: Path) -> Iterator[Import]:
    """Every import of project code in one file (in functions too; TYPE_CHECKING aside)."""
    module = module_name(path)
    tree = ast.parse(path.read_text())
    hidden = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in hidden or not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                if path.name != "__init__.py":
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # ``from shipway import x`` imports the subpackage x (or a name of shipway)
            targets = (
                [f"{base}.{alias.name}" for alias in node.names] if base == "shipway" else [base]
            )
        for target in targets:
            if target.split(".")[0] in ("shipway", "workers") and target != REGISTRY:
                yield Import(module=module, path=path, line=node.lineno, target=target)


def package_graph() -> dict[str, set[str]]:
    """Package → the packages it imports (itself aside)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in source_files():
        for found in imports_of(path):
            source, target = package_of(found.module), package_of(found.target)
            if source != target and found.module != REGISTRY:
                graph[source].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph()
    assert cycles(graph) == [], {k: sorted(v) for k, v in sorted(graph.items())}


def test_the_job_engine_imports_no_feature_and_no_entry_point() -> None:
    wrong = [
        f"{found.module}:{found.line} imports {found.target}"
        for path in source_files()
        for found in imports_of(path)
        if package_of(found.module) == "jobs"
        and not found.module.endswith("routes")
        and package_of(found.target) not in ENGINE_MAY_IMPORT
    ]
    assert wrong == []


def test_nothing_but_entry_points_imports_an_entry_point() -> None:
    wrong = [
        f"{found.module}:{found.line} imports {found.target}"
        for path in source_files()
        for found in imports_of(path)
        if package_of(found.target) in ENTRY_POINTS and package_of(found.module) not in ENTRY_POINTS
    ]
    assert wrong == []


def test_modules_are_at_most_400_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in source_files()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def _routes(tree: ast.AST) -> Iterator[ast.FunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                call = decorator.func if isinstance(decorator, ast.Call) else decorator
                if isinstance(call, ast.Attribute) and call.attr in (
                    "get",
                    "post",
                    "put",
                    "patch",
                    "delete",
                ):
                    yield node
                    break


def test_route_handlers_are_thin() -> None:
    fat = {}
    for path in source_files():
        if not path.name.endswith("routes.py"):
            continue
        for route in _routes(ast.parse(path.read_text())):
            body = route.body[1:] if ast.get_docstring(route) else route.body
            lines = body[-1].end_lineno - body[0].lineno + 1 if body else 0  # type: ignore[operator]
            if lines > MAX_ROUTE_BODY_LINES:
                fat[f"{module_name(path)}.{route.name}"] = lines
    assert fat == {}


@pytest.mark.parametrize(
    ("module", "expected"),
    [("shipway.jobs.relay", "jobs"), ("workers.tasks", "workers"), ("shipway.api", "api")],
)
def test_package_of(module: str, expected: str) -> None:
    assert package_of(module) == expected


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
