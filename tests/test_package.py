"""The package's own structure: no module imports one that imports it back, lazy imports included."""

import ast
from pathlib import Path

import diffusers_gits


PACKAGE = Path(diffusers_gits.__file__).parent


def _module_name(path: Path) -> str:
    """`calibration.stages` for `diffusers_gits/calibration/stages.py`; a package is its `__init__`."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def _imports(path: Path) -> set[str]:
    """The package modules `path` imports anywhere in it (function bodies too), by dotted name inside the package.
    Importing a module of another subpackage imports that subpackage (its `__init__`) first: both are counted."""
    name = _module_name(path)
    package = name.split(".") if path.stem == "__init__" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            base = package[: len(package) - (node.level - 1)]
            targets = [[*base, *node.module.split(".")]] if node.module else [[*base, a.name] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffusers_gits."):
            targets = [node.module.split(".")[1:]]
        else:
            continue
        for target in targets:
            found |= {".".join(target[:i]) for i in range(1, len(target) + 1)}
    found -= {".".join(package[:i]) for i in range(1, len(package) + 1)}  # its own packages are already importing
    known = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return (found & known) - {name}


def test_the_package_has_no_import_cycles():
    graph = {_module_name(path): _imports(path) for path in PACKAGE.rglob("*.py") if _module_name(path) != "__init__"}
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
    # the graph is read, subpackages and relative levels included
    assert {"scheduling_gits", "calibration.recorder"} <= graph["calibration.stages"]
    assert "noise" in graph["calibration.search"] and "calibration.stages" in graph["calibration"]


def test_the_package_itself_never_imports_its_test_support():
    """`diffusers_gits.testing` (exact models, data sets) serves tests and benchmarks only."""
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        if name.split(".")[0] != "testing":
            assert not {t for t in _imports(path) if t.split(".")[0] == "testing"}, name


def test_the_literal_names_of_the_api_are_the_names_the_code_accepts():
    from typing import get_args

    from diffusers_gits.solvers import SOLVERS, SolverName

    assert set(get_args(SolverName)) == set(SOLVERS)
