"""The package's shape: imports go one way, down a table of layers, with no cycle; align/ stays small at the top and
no module grows past 400 lines.

Every import counts: at the top of a module, inside a function and under TYPE_CHECKING. `from P import n` is an import
of the module P.n where that is a module, else of P itself (its __init__). Python runs a package's __init__ before any
of its modules; that is load order, not a dependency, so only the module named counts. `align.stages` loads its stage
modules by name (importlib), which is no import here.

The layers, highest first (LAYERS below). A module imports modules of its own layer or lower ones, never higher:
- cli: `align.cli`, the only printer.
- runs of stages: `align.pipeline`, `align.sweep`, `align.validate`.
- entry points: each stage's module (`align.stages.sft`, ..., the `align.stages.ppo` package and its `loop`), the
  stage registry `align.stages`, and each command's package and driver (`align.eval` and `align.eval.command`,
  likewise probe and report). An entry point imports no other entry point, except a package's __init__ importing
  its own modules: commands and stages share code through the layers below, never by calling each other. So no
  module inside a package imports the package or its driver (e.g. nothing under align/stages/ppo/ imports
  `align.stages.ppo` or `align.stages.ppo.loop`). `align.use` holds two commands, `chat` and `export`.
- stage and command parts: every other module under align/stages/, align/eval/, align/probe/, align/report/,
  align/use/.
- building blocks: `align.observe`, `generation`, `data`, `models`, `chat`, `rundir`, `config`, `sections`,
  `registry`, `reward_functions`.
- pure: `align` itself (the version only), `align.rl`, `align.errors`.
- data formats: `data_formats`, which imports nothing from align (it stays usable, and torch-free, on its own).
A new module goes into the table before this test passes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("align", "data_formats")
MAX_TOP_LEVEL_MODULES = 16
MAX_LINES = 400

LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("cli", frozenset({"align.cli"})),
    ("runs of stages", frozenset({"align.pipeline", "align.sweep", "align.validate"})),
    ("entry points", frozenset({
        "align.stages", "align.stages.sft", "align.stages.reward", "align.stages.dpo", "align.stages.ppo",
        "align.stages.kto", "align.stages.orpo", "align.stages.simpo",
        "align.stages.grpo", "align.stages.rloo",
        "align.stages.ppo.loop", "align.eval", "align.eval.command", "align.probe", "align.probe.command",
        "align.report", "align.report.command", "align.use", "align.use.chat", "align.use.export"})),
    ("stage and command parts", frozenset({"align.stages.*", "align.eval.*", "align.probe.*", "align.report.*",
                                           "align.use.*"})),
    ("building blocks", frozenset({
        "align.observe", "align.observe.*", "align.generation", "align.data", "align.models", "align.chat",
        "align.rundir", "align.config", "align.sections", "align.registry", "align.reward_functions"})),
    ("pure", frozenset({"align", "align.rl", "align.errors"})),
    ("data formats", frozenset({"data_formats", "data_formats.*"})),
)
"""(layer, its modules), highest first; `P.*` is every module under the package P. An exact name wins over `P.*`,
and a longer `P.*` over a shorter one."""
ENTRY_POINTS = dict(LAYERS)["entry points"]


@dataclass(frozen=True)
class Import:
    source: str
    """The importing module."""
    target: str
    """The module imported."""
    where: str
    """path:line and the statement, for a failure message."""

    def __str__(self) -> str:
        return f"{self.where} ({self.source} -> {self.target})"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of align/ and data_formats/ (a package is its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(module: str, path: Path, modules: set[str]) -> list[Import]:
    """The imports of our own modules in `path`, wherever they stand in it."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def ours(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [ours(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else ours(base)
                       for alias in node.names]
        else:
            continue
        where = f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
        found += [Import(module, target, where) for target in dict.fromkeys(targets) if target not in (None, module)]
    return found


def all_imports() -> list[Import]:
    files = module_files()
    return [found for module, path in files.items() for found in imports_of(module, path, set(files))]


def layer_of(module: str) -> int | None:
    """Index into LAYERS (0 is the highest layer), or None for a module the table does not place."""
    for index, (_, members) in enumerate(LAYERS):
        if module in members:
            return index
    packages = [(pattern[:-2], index) for index, (_, members) in enumerate(LAYERS) for pattern in members
                if pattern.endswith(".*") and module.startswith(pattern[:-1])]
    return max(packages, key=lambda found: len(found[0]))[1] if packages else None


def test_every_module_has_a_layer():
    unplaced = [module for module in module_files() if layer_of(module) is None]
    assert not unplaced, f"modules missing from LAYERS in {Path(__file__).name}: {unplaced}"


def test_no_module_imports_a_higher_layer():
    placed = [found for found in all_imports() if None not in (layer_of(found.source), layer_of(found.target))]
    upward = [f"{found}: {LAYERS[layer_of(found.source)][0]} imports {LAYERS[layer_of(found.target)][0]}"
              for found in placed if layer_of(found.target) < layer_of(found.source)]
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_entry_points_do_not_import_each_other():
    def own_module(found: Import) -> bool:
        return module_files()[found.source].name == "__init__.py" and found.target.startswith(found.source + ".")

    crossing = [str(found) for found in all_imports()
                if found.source in ENTRY_POINTS and found.target in ENTRY_POINTS and not own_module(found)]
    assert not crossing, "entry points that import another entry point:\n" + "\n".join(crossing)


def test_no_import_cycle():
    graph: dict[str, list[Import]] = {}
    for found in all_imports():
        graph.setdefault(found.source, []).append(found)
    state: dict[str, str] = {}
    path: list[Import] = []

    def visit(module: str) -> list[Import] | None:
        """DFS; the imports that close a cycle back to a module on the current path, or None."""
        state[module] = "open"
        for found in graph.get(module, []):
            if state.get(found.target) == "open":
                start = next(i for i, step in enumerate(path) if step.source == found.target) if path else 0
                return path[start:] + [found]
            if found.target not in state:
                path.append(found)
                cycle = visit(found.target)
                if cycle:
                    return cycle
                path.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, "import cycle:\n" + "\n".join(map(str, cycle))


def test_align_stays_small_at_the_top():
    top_level = sorted(path.name for path in (ROOT / "align").glob("*.py"))
    assert not [name for name in top_level if name.startswith("ppo_")], "PPO lives in align/stages/ppo/"
    assert len(top_level) <= MAX_TOP_LEVEL_MODULES, (
        f"{len(top_level)} modules directly in align/ (at most {MAX_TOP_LEVEL_MODULES}; a concept with several "
        f"files gets a folder): {top_level}")


def test_no_module_is_over_400_lines():
    long = {str(path.relative_to(ROOT)): n for path in module_files().values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by concept): {long}"
