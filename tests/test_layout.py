"""The package's shape: no import cycle, and no stage importing another stage.

Module-level ``import``/``from ... import`` statements of ``dpgd`` form a graph (imports
inside functions and ``TYPE_CHECKING`` blocks are deliberate late bindings and are not
edges). Stages share code only through the shared modules (``config``, ``data``,
``distilled``, ``training``, ``counts``, ``privacy``, ``models``, ``augment`` ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dpgd"
STAGES = ("dpgd.generators", "dpgd.expert", "dpgd.matching", "dpgd.initialisation", "dpgd.evaluation", "dpgd.mia")


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dpgd"):
                for alias in node.names:  # ``from pkg import module`` is an edge to the module
                    target = f"{node.module}.{alias.name}"
                    edges.add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name.startswith("dpgd")}
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if not state.get(nxt):
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node):
            found = visit(node)
            if found:
                return found
    return None


def stage_of(module: str) -> str | None:
    return next((stage for stage in STAGES if module == stage or module.startswith(stage + ".")), None)


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert find_cycle(graph) is None, find_cycle(graph)


def test_the_cycle_check_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_stage_imports_another_stage():
    crossing = [(module, target) for module, targets in import_graph().items() for target in targets
                if stage_of(module) and stage_of(target) and stage_of(module) != stage_of(target)]
    assert crossing == []

