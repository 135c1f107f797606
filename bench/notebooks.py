"""Wall-clock time to execute every numbered notebook (notebooks/NN_*.ipynb), as a multiple of
one preset training run timed on the same machine in the same invocation.

First, the reference: ``python -m mpn_tutorial train --preset glyphs --loss mpn`` (a fresh process,
its folder in a temporary directory), timed from start to exit. Then each notebook is read into
memory and executed by nbconvert's ``ExecutePreprocessor`` in a fresh ``python3`` kernel of this
interpreter, with ``notebooks/`` as the working directory (as a learner runs it) and an **empty
run store** (``MPN_TUTORIAL_RUNS`` points at a temporary folder, so every model is trained as on a
first run; ``--warm`` uses the project's ``data/runs`` instead). The executed copies are
discarded (the committed notebooks are never written), unless ``--write`` asks to save each executed
notebook in place: one pass then both times the sequence and refreshes the outputs nbval compares
against (what ``make tutorial`` does, timed). ``--write`` uses the project's run store (``data/runs``),
since the notebooks print where their runs are kept: delete that folder first to time from scratch.

Prints the seconds per notebook, ``notebooks: total_minutes: X``, ``notebooks: reference_seconds: X``
and ``notebooks: total_over_preset_runs: X`` (target <= 10: the sequence in at most ten preset
training runs' time). ``--quick`` times a trivial notebook instead. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import REPO_ROOT, print_header, print_ratio

from mpn_tutorial.tools.atomic import write_atomically

TARGET_PRESET_RUNS = 10


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


def time_reference_run(folder: Path) -> float:
    """Seconds of one ``train --preset glyphs --loss mpn`` run in a fresh process (data from data/)."""
    command = [sys.executable, "-m", "mpn_tutorial", "train", "--preset", "glyphs", "--loss", "mpn", "--no-progress",
               "--data-root", str(REPO_ROOT / "data"), "--checkpoint-dir", str(folder / "reference")]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=folder)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="list the notebooks, execute a trivial one")
    parser.add_argument("--folder", type=Path, default=REPO_ROOT / "notebooks")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell before giving up")
    parser.add_argument("--warm", action="store_true", help="use the project's run store instead of an empty one")
    parser.add_argument("--write", action="store_true", help="save each executed notebook in place (refresh outputs)")
    args = parser.parse_args()
    import nbformat

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

    with tempfile.TemporaryDirectory() as scratch:
        reference = time_reference_run(Path(scratch))
        print(f"notebooks: reference_seconds: {reference:.1f}", flush=True)
        if not (args.warm or args.write):  # written notebooks name the project's store, never a temporary one
            os.environ["MPN_TUTORIAL_RUNS"] = str(Path(scratch) / "runs")  # the kernels inherit it
        total = 0.0
        for path in notebooks:
            seconds, executed = execute(path, args.folder, args.timeout)
            total += seconds
            if args.write:  # a stopped run leaves the previous notebook, never half of one
                text = nbformat.writes(executed).rstrip("\n") + "\n"  # as nbformat.write ends a file
                write_atomically(path, lambda file, text=text: file.write(text.encode()))
            print(f"notebooks/{path.stem}: seconds: {seconds:.1f} ({seconds / reference:.1f} preset runs)", flush=True)
    print_ratio("notebooks", "total_minutes", total / 60)
    print_ratio("notebooks", "total_over_preset_runs", total / reference)
    print(f"# target: total_over_preset_runs <= {TARGET_PRESET_RUNS}")


if __name__ == "__main__":
    main()
