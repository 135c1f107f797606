"""The notebooks as a learner meets them: exercises to do, and a preset switch that fails clearly."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from mpn_tutorial.exercises import EXERCISES

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SETUP_LINE = 'start(preset="glyphs")'


def _code(path: Path) -> list[str]:
    return [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def test_every_notebook_has_an_exercise_and_every_exercise_a_notebook():
    exercises = {exercise.notebook for exercise in EXERCISES.values()}
    assert exercises == {path.name[:2] for path in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_each_exercise_cell_holds_a_placeholder_and_its_check_says_not_tried(path):
    notebook = nbformat.read(path, as_version=4)
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    checks = {re.search(r'^check\("(\w+)"', cell.source, re.MULTILINE).group(1): i for i, cell in enumerate(cells)
              if re.search(r'^check\("', cell.source, re.MULTILINE)}
    assert list(checks) == [name for name, exercise in EXERCISES.items() if exercise.notebook == path.name[:2]]
    for name, position in checks.items():
        exercise_cell = cells[position - 1].source
        assert f"def {name}(" in exercise_cell and "None  # your code" in exercise_cell, exercise_cell
        shown = "".join(output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
                        for output in cells[position].outputs)
        assert "not tried" in shown, f"{name}: the committed check output should say 'not tried', got: {shown!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_every_notebook_starts_with_the_one_line_setup(path):
    assert SETUP_LINE in _code(path)[0]


# 06 measures the messages on the glyphs (glyphs-attention and the glyphs' study) whatever the preset, and 07
# reads configurations and the glyphs' results only: neither needs data of the preset it is set to
NEEDS_THE_PRESETS_DATA = [path for path in NOTEBOOKS if not path.name.startswith(("06", "07"))]


@pytest.mark.slow
@pytest.mark.parametrize("path", NEEDS_THE_PRESETS_DATA, ids=lambda path: path.stem)
def test_with_a_benchmark_preset_a_notebook_runs_until_the_missing_data_and_says_so(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    first.source = first.source.replace(SETUP_LINE, 'start(preset="cub")')
    monkeypatch.setenv("MPN_TUTORIAL_RUNS", str(Path(__file__).resolve().parents[1] / "data" / "runs"))
    client = NotebookClient(notebook, kernel_name="python3", timeout=900,
                            resources={"metadata": {"path": str(path.parent)}})
    with pytest.raises(CellExecutionError) as stopped:  # a notebook that ran to its end would fail here
        client.execute()
    assert stopped.value.ename == "DatasetNotFoundError", f"{stopped.value.ename}: {str(stopped.value)[-1500:]}"
    assert "fetch cub" in str(stopped.value)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_no_markdown_cell_holds_a_control_character(path):
    # e.g. "$\bar d$" written through a Python string becomes a backspace, and MathJax shows "Math input error"
    for number, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "markdown":
            bad = sorted({f"U+{ord(c):04X}" for c in cell.source if ord(c) < 0x20 and c not in "\n\t"})
            assert not bad, f"markdown cell {number} holds control characters {bad}"
