"""The plan for a class: how long a student needs per notebook, the table in the README's "For teachers".

Per numbered notebook (notebooks/NN_*.ipynb):

- **reading** (an estimate): the words of its Markdown cells (formulas, HTML and link targets left
  out; code not counted) at ``--words-per-minute`` (120: careful reading of technical prose, about
  half the speed of ordinary reading);
- **exercises** (an allowance, not a measurement): the exercises its cells check (``check("name", ...)``),
  ``--minutes-per-exercise`` (15) for each required one; optional ones are listed, not counted;
- **running** (measured): the seconds ``bench/notebooks.py`` prints for it, once with the run store
  the teacher filled before class (``make tutorial``), once from an empty store (a student alone).

``--measure`` runs ``bench/notebooks.py --warm`` twice on a copy of the notebooks, with a private run
store that is empty for the first pass and filled by it for the second (``notebooks/`` and
``data/runs`` are never written; about twice the notebooks' time from scratch), and keeps both passes
in ``bench/class_plan_times.json`` with each notebook's code hash. Without it, words and exercises are
counted from the notebooks as they are now and the kept times are used; a notebook whose code changed
since its timing is marked. ``--write-readme`` puts the table between the README's class-plan markers.

    python bench/class_plan.py --measure --write-readme     # after editing the notebooks, on an idle machine
    python bench/class_plan.py                              # print the table
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMES = REPO_ROOT / "bench" / "class_plan_times.json"
README = REPO_ROOT / "README.md"
BEGIN, END = "<!-- class-plan:begin", "<!-- class-plan:end -->"
PASSES = {"filled": "run store filled before class", "empty": "empty run store"}


def numbered_notebooks(folder: Path) -> list[Path]:
    return sorted(path for path in folder.glob("[0-9][0-9]_*.ipynb") if path.is_file())


def prose_words(markdown: str) -> int:
    """Words a reader reads in a Markdown cell: formulas, HTML, images and link targets left out."""
    text = re.sub(r"<!--.*?-->|\$\$.*?\$\$|\$[^$\n]+\$|!\[[^\]]*\]\([^)]*\)", " ", markdown, flags=re.S)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"<[^>]+>", " ", text)
    return len(re.findall(r"[^\W_]+(?:['’-][^\W_]+)*", text))


def code_hash(notebook) -> str:
    """What decides a notebook's running time: its code cells."""
    code = "\n\0".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    return hashlib.sha256(code.encode()).hexdigest()[:12]


def exercises_checked(notebook) -> list[str]:
    """The exercises a notebook's cells check, in order."""
    return [name for cell in notebook.cells if cell.cell_type == "code"
            for name in re.findall(r"""\bcheck\(\s*["'](\w+)["']""", cell.source)]


def parse_bench(output: str) -> dict:
    """What ``bench/notebooks.py`` printed: its header, the reference run and seconds per notebook."""
    header = dict(re.findall(r"^# ([^:\n]+): (.*)$", output, re.MULTILINE))
    seconds = {name: float(value) for name, value in re.findall(r"^notebooks/(\S+): seconds: ([\d.]+)", output,
                                                                 re.MULTILINE)}
    reference = re.search(r"^notebooks: reference_seconds: ([\d.]+)", output, re.MULTILINE)
    if not seconds or reference is None:
        raise SystemExit(f"bench/notebooks.py printed no per-notebook seconds:\n{output[-2000:]}")
    return {"date": header.get("date"), "cpu": header.get("cpu"), "torch": header.get("torch"),
            "load_average": header.get("load average (1 min)"), "reference_seconds": float(reference.group(1)),
            "seconds": seconds}


def measure(folder: Path) -> dict:
    """Time the notebooks twice (empty store, then filled) on a copy; returns what to keep."""
    commit = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    edited = subprocess.run(["git", "status", "--porcelain", "--", str(folder)], cwd=REPO_ROOT, capture_output=True,
                            text=True).stdout.strip()
    kept = {"commit": commit + (" (notebooks edited since)" if edited else ""), "passes": {}, "code": {}}
    with tempfile.TemporaryDirectory(prefix="class-plan-") as scratch:
        copy = Path(scratch) / "notebooks"
        copy.mkdir()
        for path in numbered_notebooks(folder):
            shutil.copy(path, copy / path.name)
            kept["code"][path.stem] = code_hash(nbformat.read(path, as_version=4))
        # --warm: the kernels keep the store named here; the first pass fills it for the second
        environment = {**os.environ, "MPN_TUTORIAL_RUNS": str(Path(scratch) / "runs"),
                       "MPN_TUTORIAL_DATA": str(REPO_ROOT / "data")}
        for name in ("empty", "filled"):
            print(f"timing the notebooks, {PASSES[name]} ...", flush=True)
            done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "notebooks.py"), "--warm", "--folder",
                                   str(copy)], env=environment, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"bench/notebooks.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            kept["passes"][name] = parse_bench(done.stdout)
    return kept


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def plan(folder: Path, times: dict, words_per_minute: float, minutes_per_exercise: float) -> str:
    """The README block: what the columns mean, then the table."""
    from mpn_tutorial.exercises import EXERCISES

    rows, totals, stale = [], {"words": 0, "reading": 0.0, "exercises": 0.0, "filled": 0.0, "empty": 0.0}, []
    for path in numbered_notebooks(folder):
        notebook = nbformat.read(path, as_version=4)
        words = sum(prose_words(cell.source) for cell in notebook.cells if cell.cell_type == "markdown")
        checked = exercises_checked(notebook)
        required = [name for name in checked if not EXERCISES[name].optional]
        optional = [name for name in checked if EXERCISES[name].optional]
        reading, exercise_minutes = words / words_per_minute, minutes_per_exercise * len(required)
        running = {name: times["passes"][name]["seconds"].get(path.stem) for name in PASSES}
        mark = ""
        if times["code"].get(path.stem) != code_hash(notebook):
            mark = " †"
            stale.append(path.stem[:2])
        listed = ", ".join([f"`{name}`" for name in required] + [f"`{name}` (optional)" for name in optional])
        extra = f" (+{minutes_per_exercise * len(optional):.0f} optional)" if optional else ""
        rows.append(f"| {path.stem} | {words:,} | {reading:.0f} min | {listed or '—'} | "
                    f"{exercise_minutes:.0f} min{extra} | "
                    + " | ".join(duration(running[name]) + mark if running[name] is not None else "not timed"
                                 for name in PASSES)
                    + f" | **{reading + exercise_minutes + (running['filled'] or 0) / 60:.0f} min** |")
        for key, value in (("words", words), ("reading", reading), ("exercises", exercise_minutes),
                           ("filled", running["filled"] or 0), ("empty", running["empty"] or 0)):
            totals[key] += value
    rows.append(f"| all | {totals['words']:,} | {totals['reading']:.0f} min | | {totals['exercises']:.0f} min | "
                f"{duration(totals['filled'])} | {duration(totals['empty'])} | "
                f"**{(totals['reading'] + totals['exercises'] + totals['filled'] / 60) / 60:.1f} h** |")
    filled, empty = times["passes"]["filled"], times["passes"]["empty"]
    lines = [
        f"{BEGIN} (written by `python bench/class_plan.py --write-readme`; times by its `--measure`) -->",
        f"Reading is an **estimate**: the prose of each notebook's Markdown cells at {words_per_minute:.0f} words a "
        "minute (careful reading of technical prose; formulas and code not counted). Exercises are an "
        f"**allowance** of {minutes_per_exercise:.0f} minutes for each required exercise (optional ones not "
        "counted), not a measurement. Running is **measured**: every cell executed by `bench/notebooks.py` "
        f"({filled['date']}, {filled['cpu']}, torch {filled['torch']}, library at {times['commit']}; one "
        f"preset training run took {filled['reference_seconds']:.0f} s and {empty['reference_seconds']:.0f} s in "
        f"the two passes, load average {filled['load_average']} and {empty['load_average']} at their start), with "
        "the run store filled before class and from an empty one. In class = reading + exercises + running with "
        "the store filled.",
        "",
        "| notebook | prose words | reading (estimate) | exercises | exercises (allowance) | "
        f"running, {PASSES['filled']} | running, {PASSES['empty']} | in class |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    if stale:
        lines += ["", f"† the code of {', '.join(stale)} changed after its timing: run "
                  "`python bench/class_plan.py --measure --write-readme` again."]
    return "\n".join(lines + [END])


def write_readme(block: str) -> None:
    text = README.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block to replace")
    README.write_text(text[:start] + block + text[end + len(END):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", action="store_true", help="time the notebooks again (twice their run time)")
    parser.add_argument("--write-readme", action="store_true", help="replace the README's class-plan block")
    parser.add_argument("--folder", type=Path, default=REPO_ROOT / "notebooks")
    parser.add_argument("--words-per-minute", type=float, default=120)
    parser.add_argument("--minutes-per-exercise", type=float, default=15)
    args = parser.parse_args()
    if args.measure:
        kept = measure(args.folder)
        TIMES.write_text(json.dumps(kept, indent=1) + "\n")
    if not TIMES.exists():
        raise SystemExit(f"no times kept yet ({TIMES.name}): run with --measure")
    block = plan(args.folder, json.loads(TIMES.read_text()), args.words_per_minute, args.minutes_per_exercise)
    print(block)
    if args.write_readme:
        write_readme(block)


if __name__ == "__main__":
    main()
