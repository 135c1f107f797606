"""Two runs side by side with one thread each, against the same two runs one after another with all threads.

The studies train many independent runs (variants × seeds). On a 2-core CPU they can run one at a
time with 2 threads each, or two at a time with 1 thread each. This script times both ways on the
same glyph runs, round-robin (``benchlib.time_interleaved``), and prints the ratio of wall-clock
times: above 1 means side by side is faster (the study runner's ``--parallel`` uses it then).

    python bench/side_by_side.py                  # about 3 minutes on 2 cores
    python bench/side_by_side.py --steps 75 --repeats 1   # a quick look

Each run is a fresh process (``python -m mpn_tutorial train``), so start-up is counted as a study pays it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from benchlib import REPO_ROOT, print_header

from mpn_tutorial.tools.runtime import thread_count


def _command(folder: str, seed: int, steps: int, data_root: str) -> list[str]:
    return [sys.executable, "-m", "mpn_tutorial", "train", "--preset", "glyphs", "--epochs", "1",
            "--batches-per-epoch", str(steps), "--seed", str(seed), "--no-nmi", "--no-progress", "--device", "cpu",
            "--data-root", data_root, "--checkpoint-dir", os.path.join(folder, f"seed{seed}"), "--overwrite"]


def _run_all(threads: int, at_once: int, steps: int, data_root: str) -> float:
    """Wall-clock seconds for two runs, ``at_once`` of them at a time, each with ``threads`` threads."""
    environment = {**os.environ, "MPN_TUTORIAL_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        for first in range(0, 2, at_once):
            processes = [subprocess.Popen(_command(folder, seed, steps, data_root), env=environment,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                         for seed in range(first, first + at_once)]
            for process in processes:
                _, errors = process.communicate()
                if process.returncode != 0:
                    raise RuntimeError(f"a run failed: {errors[-2000:]}")
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-root", default=str(REPO_ROOT / "data"))
    args = parser.parse_args(argv)
    cores = thread_count()
    print_header("two runs: one after another with all threads, or side by side with one each",
                 {"steps per run": args.steps, "threads": cores, "repeats": args.repeats})
    sequential, parallel = [], []
    for _ in range(args.repeats):  # round-robin, so that a load spike slows both ways alike
        sequential.append(_run_all(cores, 1, args.steps, args.data_root))
        parallel.append(_run_all(1, 2, args.steps, args.data_root))
    best_sequential, best_parallel = min(sequential), min(parallel)
    print(f"one after another, {cores} threads each: {best_sequential:.1f} s for two runs (best of {args.repeats})")
    print(f"side by side, 1 thread each:          {best_parallel:.1f} s for two runs")
    print(f"ratio (one after another / side by side): {best_sequential / best_parallel:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
