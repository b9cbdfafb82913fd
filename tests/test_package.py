"""The package's own structure: no module imports one that imports it back, lazy imports included."""

import ast
from pathlib import Path

import diffusers_gits


PACKAGE = Path(diffusers_gits.__file__).parent


def _imports(path: Path) -> set[str]:
    """The package modules `path` imports anywhere in it (function bodies too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffusers_gits."):
            found.add(node.module.split(".")[1])
    return found


def test_the_package_has_no_import_cycles():
    graph = {path.stem: _imports(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, " ; ".join(" -> ".join(cycle) for cycle in cycles)
    assert "calibration" in graph and "scheduling_gits" in graph["calibration"]  # the graph is read
