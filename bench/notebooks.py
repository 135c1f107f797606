"""Wall-clock time to execute every numbered notebook (notebooks/NN_*.ipynb) top to bottom.

Each notebook is read into memory and executed by nbconvert's ``ExecutePreprocessor`` in a fresh
``python3`` kernel of this interpreter, with ``notebooks/`` as the working directory (as a learner
runs it). The executed copy stays in memory and is discarded: the committed notebooks are never
written. Whatever the notebooks cache on disk (trained runs under ``data/``) is their own
business: delete those caches first to time a cold run.

Prints the seconds per notebook, ``notebooks: total_minutes: X`` and
``notebooks: total_over_10_minutes_budget: X`` (the design asks for the whole sequence in a few
minutes on a 2-core CPU; target <= 1). ``--quick`` lists the notebooks and executes a trivial
temporary notebook instead, to check the machinery. Run with ``nice -n 19``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO_ROOT, print_header, print_ratio

BUDGET_MINUTES = 10.0


def numbered_notebooks(folder: Path) -> list[Path]:
    """The notebooks of the sequence, in order: ``01_*.ipynb``, ``02_*.ipynb``, ..."""
    return sorted(path for path in folder.glob("[0-9][0-9]_*.ipynb") if path.is_file())


def execute(path: Path, working_dir: Path, timeout_s: int):
    """Execute a notebook in memory (the file is only read): (wall-clock seconds, executed notebook)."""
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    notebook = nbformat.read(path, as_version=4)
    # "python3" resolves to this interpreter: jupyter_client swaps the spec's bare "python" for sys.executable
    executor = ExecutePreprocessor(timeout=timeout_s, kernel_name="python3")
    start = time.perf_counter()
    executor.preprocess(notebook, {"metadata": {"path": str(working_dir)}})
    return time.perf_counter() - start, notebook


def trivial_notebook(folder: Path) -> Path:
    """A two-cell notebook that imports the package (checks kernel, cwd and the import)."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable, os.getcwd())"),
        nbformat.v4.new_code_cell("import mpn_tutorial\nprint(mpn_tutorial.__version__)"),
    ]
    path = folder / "00_trivial.ipynb"
    nbformat.write(notebook, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="list the notebooks, execute a trivial one")
    parser.add_argument("--folder", type=Path, default=REPO_ROOT / "notebooks")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell before giving up")
    args = parser.parse_args()

    notebooks = numbered_notebooks(args.folder)
    print_header("executing the notebook sequence (nbconvert ExecutePreprocessor)", {
        "folder": args.folder,
        "notebooks": ", ".join(path.name for path in notebooks) or "none found",
        "kernel": f"python3 ({sys.executable})",
    })
    if args.quick:
        with tempfile.TemporaryDirectory() as scratch:
            seconds, executed = execute(trivial_notebook(Path(scratch)), args.folder, args.timeout)
        printed = " | ".join(output.get("text", "").strip() for cell in executed.cells for output in cell.outputs)
        print(f"# quick: a trivial notebook executed in {seconds:.2f} s, printing: {printed}")
        print("# quick: the real sequence was not run")
        return
    if not notebooks:
        print(f"# no notebooks matching NN_*.ipynb in {args.folder}")
        return

    total = 0.0
    for path in notebooks:
        seconds, _ = execute(path, args.folder, args.timeout)
        total += seconds
        print(f"notebooks/{path.stem}: seconds: {seconds:.1f}", flush=True)
    print_ratio("notebooks", "total_minutes", total / 60)
    print_ratio("notebooks", "total_over_10_minutes_budget", total / 60 / BUDGET_MINUTES)


if __name__ == "__main__":
    main()
