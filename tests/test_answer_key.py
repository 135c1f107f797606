"""The teachers' answer key: every notebook executed with its reference solution, every check correct."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mpn_tutorial.answer_key import fill_in

REPOSITORY = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPOSITORY / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_each_exercise_is_a_function_named_like_its_solution(path):
    from mpn_tutorial import solutions

    notebook = nbformat.read(path, as_version=4)
    exercise = fill_in(notebook)
    assert callable(getattr(solutions, exercise))
    cell = next(c for c in notebook.cells if c.cell_type == "code" and "from mpn_tutorial.solutions import" in c.source)
    assert f"def {exercise}(" in cell.source  # the learner writes the function the solution replaces


@pytest.mark.slow
def test_the_answer_key_command_writes_executed_notebooks_whose_checks_all_say_correct(tmp_path):
    output = tmp_path / "answer_key"
    completed = subprocess.run([sys.executable, "-m", "mpn_tutorial", "answer-key", "--notebooks",
                                str(REPOSITORY / "notebooks"), "--output", str(output)],
                               capture_output=True, text=True, timeout=2400, cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    written = sorted(path.name for path in output.glob("[0-9][0-9]_*.ipynb"))
    assert written == [path.name for path in NOTEBOOKS]
    for path in NOTEBOOKS:
        executed = nbformat.read(output / path.name, as_version=4)
        check = next(c for c in executed.cells if c.cell_type == "code" and c.source.lstrip().startswith(
            "from mpn_tutorial.exercises import check"))
        shown = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in check.outputs)
        assert "correct" in shown and "not tried" not in shown, f"{path.name}: {shown}"
    original = nbformat.read(NOTEBOOKS[0], as_version=4)
    assert "from mpn_tutorial.solutions import" not in "".join(c.source for c in original.cells)  # untouched
