"""The library's imports point one way (README, "The library"): no module imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mpn_tutorial"

# 0: plumbing; 1: the ground floor (independent of each other); 2: what stands on it;
# 3: the loop; 4: what the notebooks and the command line use on top.
LEVELS = {
    "tools.runtime": 0, "tools.atomic": 0, "errors": 0, "tools.settings": 0, "tools.registry": 0, "tools": 0,
    "data": 1, "backbones": 1, "models": 1, "losses": 1, "miners": 1, "metrics": 1, "tools.distributed": 1,
    "tools.fetch": 1, "controls": 2, "config": 2, "presets": 2, "evaluation": 2, "callbacks": 2, "tools.checkpoints": 2,
    "training": 3,
    "tools.run_store": 4, "tools.stats": 4, "viz": 4, "exercises": 4, "solutions": 4, "notebook": 4,
    "tools.commands": 5, "tools.answer_key": 5, "tools.cli": 5, "__main__": 5, "__init__": 0,
}
# the full model is built on the backbones; the triplet loss on its miners
GROUND_FLOOR_EXCEPTIONS = {("models", "backbones"), ("losses", "miners")}


def _top(name: str) -> str:
    """The module's level name: ``data`` for anything in data/, ``tools.x`` for a module of tools/."""
    parts = name.split(".")[1:] if name.startswith("mpn_tutorial.") else []
    if not parts:
        return "__init__"
    return ".".join(parts[:2]) if parts[0] == "tools" and len(parts) > 1 else parts[0]


def _module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1] or ("__init__",)
    return _top("mpn_tutorial." + ".".join(parts)) if parts != ("__init__",) else "__init__"


def _imports() -> list[tuple[str, str, int]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = _module_of(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mpn_tutorial"):
                names = ([node.module] if node.module != "mpn_tutorial"
                         else [f"mpn_tutorial.{alias.name}" for alias in node.names])
                found += [(module, _top(name), node.lineno) for name in names]
    return found


def test_every_module_has_a_level():
    modules = {_module_of(path) for path in PACKAGE.rglob("*.py")}
    assert modules <= set(LEVELS), sorted(modules - set(LEVELS))


def test_no_import_points_up_and_the_ground_floor_modules_are_independent():
    for importer, imported, line in _imports():
        if importer == imported or importer == "__init__":
            continue
        assert LEVELS[imported] <= LEVELS[importer], f"{importer} (level {LEVELS[importer]}) imports {imported} " \
            f"(level {LEVELS[imported]}) at line {line}"
        if LEVELS[importer] == LEVELS[imported] == 1:
            assert (importer, imported) in GROUND_FLOOR_EXCEPTIONS, f"{importer} imports {imported} (line {line})"


def test_only_viz_imports_widgets():
    for path in PACKAGE.rglob("*.py"):
        if "ipywidgets" in path.read_text():
            assert path.parent.name == "viz", path
