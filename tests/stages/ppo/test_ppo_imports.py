"""The PPO package's imports go one way (docs/ppo.md section 2): no module imports `loop` or the package itself, and
there is no cycle. Every import counts: top level, inside functions and under TYPE_CHECKING."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

PACKAGE = "align.stages.ppo"
FOLDER = Path(__file__).resolve().parents[3] / "align" / "stages" / "ppo"


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports; `__init__` for a name taken from the package itself."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
            found |= {alias.name if alias.name in modules else "__init__" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found |= {name.split(".")[3] for name in names if name.startswith(PACKAGE + ".")}
        found |= {"__init__" for name in names if name == PACKAGE}
    return found - {path.stem}


def test_imports_go_one_way():
    modules = {path.stem for path in FOLDER.glob("*.py")}
    graph = {path.stem: imported_modules(path, modules) for path in FOLDER.glob("*.py")}
    upward = {name: deps & {"loop", "__init__"} for name, deps in graph.items()
              if name != "__init__" and deps & {"loop", "__init__"}}
    assert not upward, f"modules that import the loop or the package: {upward}"
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as cycle:
        raise AssertionError(f"import cycle: {cycle.args[1]}") from None
