"""The teachers' answer key: the committed notebooks with each solution's code in the exercise cell,
why it is right and the common mistakes after the check, executed (one notebook here; all with
`make answer-key`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from mpn_tutorial.exercises import EXERCISES, check
from mpn_tutorial.tools.answer_key import committed_source, fill_in, write_answer_key

REPOSITORY = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPOSITORY / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_the_keys_exercise_cell_holds_the_solution_code_which_the_check_calls_correct(path):
    notebook = nbformat.read(path, as_version=4)
    name = fill_in(notebook)
    cell = next(c for c in notebook.cells if c.cell_type == "code" and f"def {name}(" in c.source)
    assert "### BEGIN SOLUTION" in cell.source and "return None  # your code" not in cell.source
    assert cell.metadata["nbgrader"]["solution"] is True
    namespace = {"torch": torch, "np": np}
    exec(cell.source, namespace)  # the code a teacher sees is the code that is checked
    feedback = check(name, namespace[name], *EXERCISES[name].example())
    assert feedback.status == "correct", feedback


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_the_key_explains_the_solution_and_lists_each_mistake_with_the_checks_feedback(path):
    notebook = nbformat.read(path, as_version=4)
    name = fill_in(notebook)
    position = next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code" and f'check("{name}"' in c.source)
    explained = next(c.source for c in notebook.cells[position - 1:] if c.cell_type == "markdown"
                     and "Answer key" in c.source)
    for mistake in EXERCISES[name].mistakes:
        assert mistake.what in explained and mistake.says in explained, mistake.what


def test_the_key_reads_the_committed_notebook_not_a_learners_edit(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    notebook = tmp_path / "01_x.ipynb"
    notebook.write_text("committed")
    subprocess.run(["git", "-C", str(tmp_path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   check=True)
    notebook.write_text("a learner's edit")
    assert committed_source(notebook) == "committed"
    untracked = tmp_path / "02_y.ipynb"
    untracked.write_text("not in git")
    assert committed_source(untracked) == "not in git"


@pytest.mark.slow
def test_an_executed_key_notebook_says_correct_and_the_learners_notebook_is_untouched(tmp_path):
    before = NOTEBOOKS[-1].read_bytes()
    feedback = write_answer_key(REPOSITORY / "notebooks", tmp_path, only=(NOTEBOOKS[-1].name[:2],))
    assert list(feedback) == [NOTEBOOKS[-1].name]
    assert "correct" in feedback[NOTEBOOKS[-1].name] and "not tried" not in feedback[NOTEBOOKS[-1].name]
    assert nbformat.read(tmp_path / NOTEBOOKS[-1].name, as_version=4).cells  # written
    assert NOTEBOOKS[-1].read_bytes() == before
