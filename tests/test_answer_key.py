"""The teachers' answer key: the committed notebooks with each solution's code in the exercise cell,
why it is right and the common mistakes after the check, executed (one notebook here; all with
`make answer-key`)."""

from __future__ import annotations

import ast
import subprocess
from collections import Counter
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
def test_the_keys_exercise_cells_hold_the_solution_code_which_the_check_calls_correct(path):
    notebook = nbformat.read(path, as_version=4)
    names = fill_in(notebook)
    assert names == [name for name, exercise in EXERCISES.items() if exercise.notebook == path.name[:2]]
    for name in names:
        cell = next(c for c in notebook.cells if c.cell_type == "code" and f"def {name}(" in c.source)
        assert "### BEGIN SOLUTION" in cell.source and "return None  # your code" not in cell.source
        assert cell.metadata["nbgrader"]["solution"] is True
        namespace = {"torch": torch, "np": np}
        exec(_imports_before(notebook, cell), namespace)
        exec(cell.source, namespace)  # the code a teacher sees is the code that is checked
        feedback = check(name, namespace[name], *EXERCISES[name].example())
        assert feedback.status == "correct", (name, feedback)


def _parsed(source: str) -> ast.Module:
    """A code cell's Python, its IPython lines (%magic, !command) left out."""
    return ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))))


def _imports_before(notebook, cell) -> str:
    """The imports of the code cells before ``cell`` that bind a name ``cell`` uses (what the kernel has imported
    for it when it runs)."""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    used = {node.id for node in ast.walk(_parsed(cell.source)) if isinstance(node, ast.Name)}
    statements = []
    for tree in (_parsed(c.source) for c in code[:code.index(cell)]):
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [alias for alias in node.names if (alias.asname or alias.name).split(".")[0] in used]
                if names:
                    statements.append(ast.unparse(type(node)(**{**node.__dict__, "names": names})))
    return "\n".join(statements)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_each_import_appears_once_in_the_key(path):
    # the solution's imports join the cell only where the notebook has not imported the name already
    notebook = nbformat.read(path, as_version=4)
    fill_in(notebook)
    bound = Counter(alias.asname or alias.name for cell in notebook.cells if cell.cell_type == "code"
                    for node in _parsed(cell.source).body
                    if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names)
    assert not [name for name, count in bound.items() if count > 1]


def test_the_solutions_imports_that_the_notebook_lacks_are_added_to_its_exercise_cell():
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import torch"),
        nbformat.v4.new_code_cell("def batch_hard(embeddings, labels):\n    return None  # your code"),
        nbformat.v4.new_code_cell('check("batch_hard", batch_hard, embeddings, labels)')])
    fill_in(notebook)
    assert notebook.cells[1].source.startswith("from mpn_tutorial.miners import pair_masks, pairwise_distances")
    assert "import torch" not in notebook.cells[1].source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_the_key_explains_the_solution_and_lists_each_mistake_with_the_checks_feedback(path):
    notebook = nbformat.read(path, as_version=4)
    for name in fill_in(notebook):
        position = next(i for i, c in enumerate(notebook.cells)
                        if c.cell_type == "code" and f'check("{name}"' in c.source)
        explained = notebook.cells[position + 1].source
        assert "Answer key" in explained
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
    said = feedback[NOTEBOOKS[-1].name]
    assert said and all("correct" in text and "not tried" not in text for text in said.values())
    assert nbformat.read(tmp_path / NOTEBOOKS[-1].name, as_version=4).cells  # written
    assert NOTEBOOKS[-1].read_bytes() == before


def _one_exercise_notebook(folder: Path) -> None:
    """A notebook with 07's exercise whose first cell writes a line to the kernel's stderr."""
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os\nos.write(2, b'a line the kernel writes to stderr\\n')"),
        nbformat.v4.new_code_cell("def training_steps(epochs, training_images, batch_size):\n"
                                  "    return None  # your code"),
        nbformat.v4.new_code_cell('from mpn_tutorial.exercises import check\n\n'
                                  'check("training_steps", training_steps, 70, 54)')])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    folder.mkdir()
    nbformat.write(notebook, folder / "07_one_exercise.ipynb")


def test_the_keys_kernels_do_not_warn_about_unencrypted_tcp_and_other_output_still_shows(tmp_path, capfd):
    _one_exercise_notebook(tmp_path / "notebooks")
    feedback = write_answer_key(tmp_path / "notebooks", tmp_path / "key", data=tmp_path / "data")
    assert "correct" in feedback["07_one_exercise.ipynb"]["training_steps"]
    shown = "".join(capfd.readouterr())
    assert "without encryption" not in shown
    assert "a line the kernel writes to stderr" in shown  # the kernel's stderr is not silenced
