"""The package's import graph has no cycles, the store sits at the bottom and inference carries no
training code.

The graph is read from the source with :mod:`ast`: every ``import`` of a senpath module counts,
at module level or inside a function (a lazy import is still a dependency); imports under
``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import senpath

PACKAGE = Path(senpath.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names a module imports (``from a import b`` gives ``a.b`` and ``a``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """senpath module -> the senpath modules it imports."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = set()
        for dotted in _imports(tree, name, path.name == "__init__.py"):
            while dotted and dotted not in files:  # ``from pkg import function``: the module
                dotted = dotted.rpartition(".")[0]
            if dotted.startswith("senpath") and dotted != name:
                targets.add(dotted)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_imports() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import senpath.x\n"
        "def f():\n    from senpath.y import z\n"
        "from . import w\n"
    )
    assert _imports(tree, "senpath.m", False) == {
        "typing",
        "typing.TYPE_CHECKING",
        "senpath.y",
        "senpath.y.z",
        "senpath",
        "senpath.w",
    }


def test_senpath_has_no_import_cycles() -> None:
    graph = import_graph()
    assert "senpath.results" in graph and graph["senpath.report"]  # the graph was read
    assert cycles(graph) == []


def test_the_store_is_at_the_bottom() -> None:
    graph = import_graph()
    above = {"senpath.corrections", "senpath.export", "senpath.report", "senpath.geojson"}
    assert not {m for m in graph["senpath.results"] if m.startswith(tuple(above))}
    assert graph["senpath.results"] <= {"senpath.provenance"}


def _loaded(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return {m for m in out.split() if m.startswith("senpath")}


def test_importing_the_store_loads_no_corrections_export_or_report() -> None:
    loaded = _loaded("import senpath.results")
    assert "senpath.results" in loaded
    for above in ("senpath.corrections", "senpath.export", "senpath.report", "senpath.geojson"):
        assert not {m for m in loaded if m == above or m.startswith(above + ".")}, loaded


TRAINING = ("train", "data", "datasets", "rerender", "export")


@pytest.mark.parametrize("module", ["senpath.segment", "senpath.segment.predict"])
def test_inference_loads_no_training_code(module: str) -> None:
    loaded = _loaded(f"import {module}")
    assert module in loaded
    assert not loaded & {f"senpath.segment.{m}" for m in TRAINING}, loaded
