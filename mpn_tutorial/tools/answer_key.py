"""The teachers' answer key (``python -m mpn_tutorial answer-key``): every numbered notebook as committed (a
learner's edits never reach the key), each exercise's reference solution (:mod:`mpn_tutorial.solutions`) filled
in, executed in a fresh kernel, where each check must say "correct"."""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import tempfile
import textwrap
from pathlib import Path

from mpn_tutorial.errors import MissingFileError, UsageError

CHECK_CALL = re.compile(r'^check\("(\w+)"', re.MULTILINE)
PLACEHOLDER = "return None  # your code"


def committed_source(path: Path) -> str:
    """The notebook as committed (HEAD) when it is tracked in a git checkout; else the file as it is."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True,
                             cwd=path.parent).stdout.strip()
        relative = path.resolve().relative_to(Path(top).resolve()).as_posix()
        return subprocess.run(["git", "show", f"HEAD:{relative}"], capture_output=True, text=True, check=True,
                              cwd=top).stdout
    except (OSError, ValueError, subprocess.CalledProcessError):  # no git, not a checkout, or not tracked
        return path.read_text()


def _binding(node: ast.Import | ast.ImportFrom, alias: ast.alias) -> tuple[str, str]:
    """The name one alias of an import statement binds, and what it binds it to."""
    if isinstance(node, ast.Import):
        return (alias.asname, alias.name) if alias.asname else (alias.name.split(".")[0],) * 2
    return alias.asname or alias.name, f"{'.' * node.level}{node.module or ''}.{alias.name}"


def imported_names(source: str) -> dict[str, str]:
    """The names the import statements of ``source`` bind, each with what it is bound to:
    ``import numpy as np`` gives ``{"np": "numpy"}``, ``from a.b import c`` gives ``{"c": "a.b.c"}``.
    Lines of IPython syntax (``%magic``, ``!command``) are skipped; code that does not parse binds nothing."""
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return {}
    # top-level statements only: an import inside a function binds a name of that function alone
    return dict(_binding(node, alias) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names if alias.name != "*")


def solution_body(name: str, imported: dict[str, str] | None = None) -> tuple[str, str]:
    """The statements of ``solutions.<name>`` (no signature, no docstring), and the imports they need that
    ``imported`` (what the notebook has imported already, see :func:`imported_names`) does not bind."""
    from mpn_tutorial import solutions

    source = inspect.getsource(getattr(solutions, name))
    function = ast.parse(textwrap.dedent(source)).body[0]
    statements = function.body[1:] if isinstance(function.body[0], ast.Expr) else function.body
    body = textwrap.dedent("\n".join(source.splitlines()[statements[0].lineno - 1:statements[-1].end_lineno]))
    used = {node.id for statement in statements for node in ast.walk(statement) if isinstance(node, ast.Name)}
    already = set((imported or {}).items())
    imports = []
    for node in ast.parse(inspect.getsource(solutions)).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "module", None) != "__future__":
            # the tree is this call's own: keep only the names the solution needs, then print the statement
            node.names = [alias for alias in node.names
                          if _binding(node, alias)[0] in used and _binding(node, alias) not in already]
            if node.names:
                imports.append(ast.unparse(node))
    return "\n".join(imports), body


def explanation(name: str) -> str:
    """Markdown for after the check: why the solution is right, and the common mistakes with their feedback."""
    from mpn_tutorial import solutions
    from mpn_tutorial.exercises import common_mistakes

    why = inspect.getdoc(getattr(solutions, name)).split("\n", 1)[-1].strip()
    mistakes = "\n".join(f"* **{what}** — the check says: *{feedback.message}*" for what, feedback in
                         common_mistakes(name))
    return (f"**Answer key: why this is right.** {' '.join(why.split())}\n\n"
            f"**Common mistakes and the check's feedback** (on inputs like this notebook's):\n\n{mistakes}")


def fill_in(notebook) -> list[str]:
    """Put the reference solution into each exercise cell (the code cell before a check) as nbgrader's solution
    cell, and the explanation after the check; returns the exercises' names in the notebook's order."""
    import nbformat

    names = []
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for position, cell in enumerate(code):
        found = CHECK_CALL.search(cell.source)
        if not found:
            continue
        name = found.group(1)
        exercise = code[position - 1]
        if PLACEHOLDER not in exercise.source or f"def {name}(" not in exercise.source:
            raise UsageError(f"the exercise cell before check({name!r}) should define {name}() with the placeholder "
                             f"`{PLACEHOLDER}`")
        # what the notebook imports before the solution runs: earlier cells and the exercise cell itself
        imported = {key: value for earlier in code[:position] for key, value in imported_names(earlier.source).items()}
        imports, body = solution_body(name, imported)
        indent = re.search(rf"^( *){re.escape(PLACEHOLDER)}", exercise.source, re.MULTILINE).group(1)
        solution = textwrap.indent(f"### BEGIN SOLUTION\n{body}\n### END SOLUTION", indent)
        exercise.source = exercise.source.replace(f"{indent}{PLACEHOLDER}", solution)
        if imports:
            exercise.source = imports + "  # what the solution uses\n" + exercise.source
        exercise.metadata["nbgrader"] = {"solution": True, "grade": False, "locked": False,
                                         "grade_id": f"{name}-solution", "schema_version": 3}
        notebook.cells.insert(notebook.cells.index(cell) + 1, nbformat.v4.new_markdown_cell(explanation(name)))
        names.append(name)
    if not names:
        raise UsageError("this notebook has no exercise check (a cell calling check(\"...\"))")
    return names


def write_answer_key(notebooks: str | os.PathLike, output: str | os.PathLike, data: str | os.PathLike | None = None,
                     only: tuple[str, ...] = ()) -> dict[str, str]:
    """Write the key of every ``NN_*.ipynb`` of ``notebooks`` (or those whose name starts with one of
    ``only``), executed, into ``output``. ``data``: the data folder the copies use (default: the one a
    notebook in ``notebooks`` finds). Returns ``{notebook file: {exercise: its check's feedback}}``."""
    import nbformat
    from nbclient import NotebookClient

    from mpn_tutorial.notebook import DATA_VARIABLE, find_data_folder

    notebooks, output = Path(notebooks), Path(output)
    paths = [path for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
             if not only or path.name.startswith(tuple(only))]
    if not paths:
        raise MissingFileError(f"no numbered notebooks (NN_*.ipynb) in {notebooks}")
    output.mkdir(parents=True, exist_ok=True)
    data = Path(data) if data is not None else find_data_folder(notebooks)[0]
    previous = os.environ.get(DATA_VARIABLE)
    os.environ[DATA_VARIABLE] = str(data.absolute())  # the kernels inherit it: the copies share the run store
    feedback = {}
    try:
        for path in paths:
            notebook = nbformat.reads(committed_source(path), as_version=4)
            exercises = fill_in(notebook)
            with tempfile.TemporaryDirectory(prefix="mpn-key-") as sockets:
                NotebookClient(notebook, kernel_name="python3", timeout=1800, config=kernel_transport(sockets),
                               resources={"metadata": {"path": str(output)}}).execute()
            nbformat.write(notebook, output / path.name)
            feedback[path.name] = {exercise: _check_output(notebook, exercise) for exercise in exercises}
            for exercise, said in feedback[path.name].items():
                print(f"{path.name}, {exercise}: {said}", flush=True)
    finally:
        if previous is None:
            os.environ.pop(DATA_VARIABLE, None)
        else:
            os.environ[DATA_VARIABLE] = previous
    return feedback


def kernel_transport(folder: str | os.PathLike):
    """The key's kernels talk over Unix sockets in ``folder`` (short and private: socket paths have a length limit)
    instead of TCP ports, so nothing listens on a port or warns that TCP is unencrypted. Windows keeps TCP."""
    from traitlets.config import Config

    config = Config()
    if os.name != "nt":
        config.KernelManager.transport = "ipc"
        config.KernelManager.ip = str(Path(folder) / "kernel")
    return config


def _check_output(notebook, exercise: str) -> str:
    for cell in notebook.cells:
        if cell.cell_type == "code" and f'check("{exercise}"' in cell.source:
            return " ".join(str(output.get("text", "")) + str(output.get("data", {}).get("text/plain", ""))
                            for output in cell.outputs).strip()
    return ""
