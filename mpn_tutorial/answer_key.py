"""The teachers' answer key: executed copies of the notebooks with the reference solutions filled in.

``python -m mpn_tutorial answer-key --output answer_key`` (or ``make answer-key``) copies every
numbered notebook, makes its exercise cell use the reference solution of :mod:`mpn_tutorial.solutions`
(each exercise is a function named like its solution), executes the copy top to bottom in a fresh
kernel, and writes it to the output folder; the learners' notebooks are never changed. Each copy's
check cell then shows the feedback on the reference answer, which must be "correct".
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mpn_tutorial.errors import MissingFileError, UsageError

CHECK_CALL = re.compile(r'^check\("(\w+)"', re.MULTILINE)


def fill_in(notebook) -> str:
    """Put the reference solution into a notebook's exercise cell (the code cell before its check);
    returns the exercise's name."""
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for index, cell in enumerate(code):
        found = CHECK_CALL.search(cell.source)
        if found:
            exercise = found.group(1)
            code[index - 1].source += f"\n\nfrom mpn_tutorial.solutions import {exercise}  # the answer key's reference"
            return exercise
    raise UsageError("this notebook has no exercise check (a cell calling check(\"...\"))")


def write_answer_key(notebooks: str | os.PathLike, output: str | os.PathLike, data: str | os.PathLike | None = None,
                     timeout: int = 1800) -> dict[str, str]:
    """Execute every ``NN_*.ipynb`` of ``notebooks`` with its solution filled in, into ``output``.

    ``data``: the data folder the copies use (default: the one a notebook in ``notebooks`` finds).
    Returns ``{notebook file: the check's feedback}``.
    """
    import nbformat
    from nbclient import NotebookClient

    from mpn_tutorial.notebook import DATA_VARIABLE, find_data_folder

    notebooks, output = Path(notebooks), Path(output)
    paths = sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise MissingFileError(f"no numbered notebooks (NN_*.ipynb) in {notebooks}")
    output.mkdir(parents=True, exist_ok=True)
    data = Path(data) if data is not None else find_data_folder(notebooks)[0]
    previous = os.environ.get(DATA_VARIABLE)
    os.environ[DATA_VARIABLE] = str(data.absolute())  # the kernels inherit it: the copies share the run store
    feedback = {}
    try:
        for path in paths:
            notebook = nbformat.read(path, as_version=4)
            exercise = fill_in(notebook)
            NotebookClient(notebook, kernel_name="python3", timeout=timeout,
                           resources={"metadata": {"path": str(output)}}).execute()
            nbformat.write(notebook, output / path.name)
            feedback[path.name] = _check_output(notebook, exercise)
            print(f"{path.name}: {feedback[path.name]}", flush=True)
    finally:
        if previous is None:
            os.environ.pop(DATA_VARIABLE, None)
        else:
            os.environ[DATA_VARIABLE] = previous
    return feedback


def _check_output(notebook, exercise: str) -> str:
    for cell in notebook.cells:
        if cell.cell_type == "code" and f'check("{exercise}"' in cell.source:
            return " ".join(str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
                            for output in cell.outputs).strip()
    return ""
