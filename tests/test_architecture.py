"""The packages' import graph: no module needs itself back while it is being imported."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bundle", "service", "training")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            parts = file.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def import_time_edges(known: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules its top-level statements import (imports inside functions run later)."""
    edges: dict[str, set[str]] = {name: set() for name in known}
    for name, file in known.items():
        for node in ast.parse(file.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from package import submodule`` needs the submodule; ``from module import name`` the module
                submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
                targets = submodules + ([node.module] if len(submodules) < len(node.names) else [])
            else:
                continue
            edges[name].update(t for t in targets if t in known and t != name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
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

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    assert cycles(import_time_edges(modules())) == []


def test_the_service_and_bundle_never_import_training() -> None:
    edges = import_time_edges(modules())
    crossing = {
        m: sorted(t for t in ts if t.startswith("training")) for m, ts in edges.items() if m.split(".")[0] != "training"
    }
    assert {m: ts for m, ts in crossing.items() if ts} == {}


def test_the_circle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
