"""A glyph preset run against its arithmetic floor, and against an earlier commit's run side by side.

Every lesson, every test that trains and every study run is a ``glyphs`` preset run, so this script
asks how far one is from what its arithmetic costs on this machine. In one process it measures:

- the **fp32 GEMM rate**: square ``torch.mm`` of sizes like the model's (the glyph CNN's
  convolutions as matrix products are about 600 × 600 × 600 each), median rate over the sizes; measured
  once next to the step's timing (for the step's floor) and again before each round of preset runs and
  after the last (for the runs' floors: the median of those, since this machine's speed drifts by
  10-15 % over the minutes the runs take);
- the **FLOPs** of one training step (forward + backward of the whole model, MPN and loss included,
  and the optimizer step) and of one image's evaluation forward, counted from the modules with
  ``torch.utils.flop_counter.FlopCounterMode`` (not typed in); also the matrix products of the
  retrieval metrics and of NMI's k-means, counted the same way as the library computes them;
- the **median step time** (``training_step.Step``: what ``training.train`` runs per batch) and the
  evaluation forward's time per image (``evaluation.embed_dataset`` on the validation classes);
- a **whole preset run by part**: ``python -m mpn_tutorial train --preset glyphs --loss mpn`` in a
  fresh process (with ``--no-progress`` and a temporary ``--checkpoint-dir``), timed from outside:
  the process is started by a few lines that wrap ``training.train``, ``training.evaluate_on_test``
  and ``metrics.nmi`` with timers when those modules are imported (nothing else is touched), and the
  steps and validation passes come from the run's own ``metrics.csv`` (``train_seconds`` and
  ``seconds`` per epoch). Parts: start-up (process start to ``train()``: interpreter, imports,
  settings), steps, validation passes (embedding, metrics, attention diagnostics), test (embedding
  and retrieval metrics), NMI, and the rest (data, model, checkpoints, exit). Each part with a floor
  is printed as a ratio to it (its FLOPs / the GEMM rate); start-up and the rest have none and count
  in the whole run's ratio;
- the same run at an earlier commit (``--base``, default fbddfa0), checked out with ``git worktree``
  into a temporary folder and run with ``PYTHONPATH`` pointing at it, sharing the data folder; the
  two are timed round-robin in fresh processes (``benchlib``'s reason: a load change hits both), and
  ``current_over_base`` is the ratio of their median wall-clock times.

    nice -n 10 python bench/preset_floor.py            # about 6 minutes on 2 cores
    python bench/preset_floor.py --quick               # about a minute: a 2-epoch run of 5 steps each

Prints ``preset_floor: LABEL: VALUE`` lines; targets: ``step_over_floor`` <= 1.5 (median step),
``run_over_floor`` <= 1.6 (the whole run, start-up and evaluation included; also printed run by run, each
against the rate measured around its round, and their median). Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchlib import REPO_ROOT, print_header, print_ratio, time_interleaved
from torch.utils.flop_counter import FlopCounterMode

from mpn_tutorial.data import PKSampler
from mpn_tutorial.data.build import build_datasets
from mpn_tutorial.presets import get_preset

BASE_COMMIT = "fbddfa0"
GEMM_SIZES = (384, 512, 768, 1024)
PARTS = ("startup", "steps", "validation", "test", "nmi", "rest")

# Run in the fresh process (python -c CHILD train ...): time train(), the test evaluation and NMI when
# their modules are imported, write the times as JSON at exit, and run the command line as -m would.
CHILD = r"""
import atexit, json, os, runpy, sys, time
times = {"started": time.time(), "entered": None, "left": None, "test": 0.0, "nmi": 0.0}
def timed(function, key, edges=False):
    def wrapper(*args, **kwargs):
        start = time.time()
        if edges:
            times["entered"] = start
        try:
            return function(*args, **kwargs)
        finally:
            if edges:
                times["left"] = time.time()
            else:
                times[key] += time.time() - start
    return wrapper
def patch_training(module):
    module.train = timed(module.train, None, edges=True)
    module.evaluate_on_test = timed(module.evaluate_on_test, "test")
def patch_metrics(module):
    module.nmi = timed(module.nmi, "nmi")
PATCHES = {"mpn_tutorial.training": patch_training, "mpn_tutorial.metrics": patch_metrics}
class Patcher:
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        execute = spec.loader.exec_module
        def exec_module(module):
            execute(module)
            PATCHES[name](module)
        spec.loader.exec_module = exec_module
        return spec
sys.meta_path.insert(0, Patcher())
atexit.register(lambda: json.dump(times, open(os.environ["PRESET_FLOOR_TIMES"], "w")))
sys.argv = ["mpn_tutorial"] + sys.argv[1:]
runpy.run_module("mpn_tutorial", run_name="__main__", alter_sys=True)
"""


def gemm_rate(sizes: tuple[int, ...], repeats: int) -> dict[int, float]:
    """GFLOPS of ``torch.mm`` on square float32 matrices of each size (median of round-robin repeats)."""
    calls = {}
    for n in sizes:
        a, b, out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        inner = max(1, int(2e9 / (2 * n**3)))  # about 2 GFLOP per timed call

        def call(a=a, b=b, out=out, inner=inner) -> None:
            for _ in range(inner):
                torch.mm(a, b, out=out)

        calls[n] = (call, inner)
    seconds = time_interleaved({n: call for n, (call, _) in calls.items()}, warmup=2, repeats=repeats)
    return {n: 2 * n**3 * calls[n][1] / seconds[n] / 1e9 for n in sizes}


def counted_flops(function) -> int:
    """FLOPs of the matrix products and convolutions that ``function()`` runs (FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def read_history(folder: Path) -> list[dict[str, float]]:
    with open(folder / "metrics.csv", newline="") as file:
        return [{key: float(value) for key, value in row.items() if value not in ("", None)}
                for row in csv.DictReader(file)]


def preset_run(tree: Path, data_root: str, run_flags: list[str]) -> dict:
    """One ``train --preset glyphs --loss mpn`` in a fresh process from ``tree``: seconds by part and its results."""
    with tempfile.TemporaryDirectory() as folder:
        times_path = os.path.join(folder, "times.json")
        command = [sys.executable, "-c", CHILD, "train", "--preset", "glyphs", "--loss", "mpn", "--no-progress",
                   "--data-root", data_root, "--checkpoint-dir", os.path.join(folder, "run"), *run_flags]
        environment = {**os.environ, "PYTHONPATH": str(tree), "PRESET_FLOOR_TIMES": times_path}
        start = time.time()
        finished = subprocess.run(command, cwd=tree, env=environment, capture_output=True, text=True)
        wall = time.time() - start
        if finished.returncode != 0:
            raise RuntimeError(f"the preset run in {tree} failed:\n{finished.stderr[-3000:]}")
        with open(times_path) as file:
            times = json.load(file)
        history = read_history(Path(folder) / "run")
    steps = sum(row["train_seconds"] for row in history)
    validation = sum(row["seconds"] - row["train_seconds"] for row in history)
    parts = {"startup": times["entered"] - start, "steps": steps, "validation": validation,
             "test": times["test"] - times["nmi"], "nmi": times["nmi"]}
    parts["rest"] = wall - sum(parts.values())
    best = re.search(r"best epoch (\d+)", finished.stdout)
    recall = re.search(r"test\s+R@1 ([0-9.]+)", finished.stdout)
    return {"wall": wall, "parts": parts, "epochs": len(history), "steps": int(history[-1]["step"]),
            "best_epoch": int(best.group(1)) if best else None,
            "test_recall_at_1": float(recall.group(1)) if recall else None}


def checkout(commit: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", "--force", str(folder), commit],
                   check=True, capture_output=True, text=True)
    return folder


def make_data(tree: Path, data_root: str) -> None:
    """Generate the tree's glyph cache if needed (its name holds the generator's hash), outside the timings."""
    environment = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-m", "mpn_tutorial", "make-data", "glyphs", "--data-root", data_root],
                   cwd=tree, env=environment, check=True, capture_output=True, text=True)


def floors(config, rate: float, run: dict, flops: dict[str, float]) -> dict[str, float]:
    """Seconds each part of ``run`` would take at ``rate`` GFLOPS doing only its counted arithmetic."""
    epochs = run["epochs"]
    return {
        "steps": run["steps"] * flops["step"] / (rate * 1e9),
        "validation": epochs * flops["validation_pass"] / (rate * 1e9),
        "test": flops["test"] / (rate * 1e9),
        "nmi": flops["nmi"] / (rate * 1e9),
    }


def count_model_flops(config, datasets, batches) -> dict[str, float]:
    """FLOPs of one step (training_step.Step, the loop's per-batch work) and of an image's evaluation forward."""
    from training_step import Step

    step = Step(config, datasets.train.num_classes, batches)
    step()  # the optimizer's state exists after the first step
    per_step = counted_flops(step)
    model = step.model.eval()
    images = batches[0][0]
    with torch.no_grad():
        per_image = counted_flops(lambda: model.retrieval_embeddings(images)) / len(images)
    return {"step": per_step, "image": per_image, "step_object": step}


def count_evaluation_flops(datasets, per_image: float, nmi_embeddings: torch.Tensor | None) -> dict[str, float]:
    """FLOPs of a validation pass and of the test evaluation: embedding forwards plus the retrieval metrics'
    (and NMI's k-means') matrix products as the library computes them."""
    from mpn_tutorial import metrics

    def retrieval(dataset) -> float:
        embeddings = torch.nn.functional.normalize(torch.randn(len(dataset), 128), dim=1)  # shapes decide the count
        return counted_flops(lambda: metrics.retrieval_metrics(embeddings, dataset.labels))

    nmi = 0.0
    if nmi_embeddings is not None:
        nmi = counted_flops(lambda: metrics.nmi(nmi_embeddings, datasets.test.labels))
    return {"validation_pass": len(datasets.val) * per_image + retrieval(datasets.val),
            "test": len(datasets.test) * per_image + retrieval(datasets.test), "nmi": nmi,
            "test_images": len(datasets.test) * per_image, "validation_images": len(datasets.val) * per_image}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny run and few repeats: check that the script runs")
    parser.add_argument("--base", default=BASE_COMMIT, help="the earlier commit to run side by side ('none': skip)")
    parser.add_argument("--repeats", type=int, default=3, help="preset runs per side (round-robin)")
    parser.add_argument("--step-repeats", type=int, default=60)
    parser.add_argument("--data-root", default=str(REPO_ROOT / "data"))
    args = parser.parse_args()
    run_flags: list[str] = []
    sizes = GEMM_SIZES
    if args.quick:
        args.repeats, args.step_repeats, sizes = 1, 3, (256, 512)
        run_flags = ["--epochs", "2", "--batches-per-epoch", "5"]
    data_root = str(Path(args.data_root).resolve())
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    print_header("a glyph preset run against its FLOP floor, and side by side with an earlier commit", {
        "commit": f"{commit}{' with uncommitted changes' if dirty else ''}", "base commit": args.base,
        "preset run": "python -m mpn_tutorial train --preset glyphs --loss mpn " + " ".join(run_flags),
        "runs": f"{args.repeats} per side, fresh processes, round-robin",
    })

    config = get_preset("glyphs", loss="mpn", data_root=data_root)
    datasets = build_datasets(config)
    sampler = PKSampler(datasets.train.labels, config.classes_per_batch, config.samples_per_class, seed=0,
                        num_batches=16)
    batches = [datasets.train.batch(indices) for indices in sampler]

    rates = gemm_rate(sizes, repeats=5 if args.quick else 15)
    rate = statistics.median(rates.values())
    print("# gemm: " + ", ".join(f"{n}: {value:.1f} GFLOPS" for n, value in rates.items()))
    print_ratio("preset_floor", "gemm_gflops", rate)

    model_flops = count_model_flops(config, datasets, batches)
    step = model_flops.pop("step_object")
    print_ratio("preset_floor", "step_gflop", model_flops["step"] / 1e9)
    print_ratio("preset_floor", "eval_mflop_per_image", model_flops["image"] / 1e6)
    from mpn_tutorial.evaluation import embed_dataset

    seconds = time_interleaved({"step": step}, warmup=5, repeats=args.step_repeats)
    step_floor = model_flops["step"] / (rate * 1e9)
    print(f"# step: median {seconds['step'] * 1e3:.2f} ms, floor {step_floor * 1e3:.2f} ms")
    print_ratio("preset_floor", "step_over_floor", seconds["step"] / step_floor)
    model = step.model
    embedding = time_interleaved({"embed": lambda: embed_dataset(model, datasets.val)}, warmup=1,
                                 repeats=2 if args.quick else 7)["embed"]
    image_floor = model_flops["image"] / (rate * 1e9)
    print(f"# evaluation forward: {embedding / len(datasets.val) * 1e6:.1f} us per image, floor "
          f"{image_floor * 1e6:.1f} us ({len(datasets.val)} validation images, median)")
    print_ratio("preset_floor", "eval_over_floor", embedding / len(datasets.val) / image_floor)

    trees = {"current": REPO_ROOT}
    scratch = Path(tempfile.mkdtemp(prefix="preset_floor_"))
    try:
        if args.base.lower() != "none":
            trees["base"] = checkout(args.base, scratch / "base")
        for tree in trees.values():
            make_data(tree, data_root)
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        run_rates = []  # the machine's speed drifts over minutes: the runs' floor takes the rate measured among them
        for _ in range(args.repeats):
            run_rates.append(statistics.median(gemm_rate(sizes, repeats=5).values()))
            for name, tree in trees.items():
                runs[name].append(preset_run(tree, data_root, run_flags))
        run_rates.append(statistics.median(gemm_rate(sizes, repeats=5).values()))
    finally:
        if "base" in trees:
            subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(trees["base"])],
                           capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)

    nmi_embeddings = embed_dataset(model, datasets.test)[0]  # k-means' iterations depend on the data: a model's
    evaluation_flops = count_evaluation_flops(datasets, model_flops["image"], nmi_embeddings)
    print("# gemm between the runs: " + ", ".join(f"{value:.1f}" for value in run_rates) + " GFLOPS")
    run_rate = statistics.median(run_rates)
    print_ratio("preset_floor", "gemm_gflops_between_runs", run_rate)
    all_flops = {**model_flops, **evaluation_flops}
    median_run = {name: min(values, key=lambda run: abs(run["wall"] - statistics.median(r["wall"] for r in values)))
                  for name, values in runs.items()}
    for name, values in runs.items():
        parts = {part: statistics.median(run["parts"][part] for run in values) for part in PARTS}
        wall = statistics.median(run["wall"] for run in values)
        floor = floors(config, run_rate, median_run[name], all_flops)
        print(f"# {name} run ({len(values)} runs, median wall {wall:.1f} s): "
              + ", ".join(f"{part} {value:.2f} s" for part, value in parts.items())
              + f"; best epoch {[run['best_epoch'] for run in values]}, "
              f"test R@1 {[run['test_recall_at_1'] for run in values]}")
        if name != "current":
            continue
        print("# floors: " + ", ".join(f"{part} {value:.2f} s" for part, value in floor.items()))
        for part in PARTS:
            print_ratio("preset_floor", f"run_{part}_seconds", parts[part])
            if part in floor and floor[part] > 0:
                print_ratio("preset_floor", f"run_{part}_over_floor", parts[part] / floor[part])
        print_ratio("preset_floor", "run_seconds", wall)
        print_ratio("preset_floor", "run_over_floor", wall / sum(floor.values()))
        # the same ratio run by run, each against the rate measured just before and just after its round
        around = [(before + after) / 2 for before, after in zip(run_rates, run_rates[1:])]
        each = [run["wall"] / sum(floors(config, rate, run, all_flops).values()) for run, rate in zip(values, around)]
        print("# run_over_floor run by run (rate of its round): " + ", ".join(f"{value:.3f}" for value in each))
        print_ratio("preset_floor", "run_over_floor_median_of_runs", statistics.median(each))
        model_only = floor["steps"] + median_run[name]["epochs"] * evaluation_flops["validation_images"] / (
            run_rate * 1e9) + evaluation_flops["test_images"] / (run_rate * 1e9)
        print_ratio("preset_floor", "run_over_model_floor", wall / model_only)
    if "base" in runs:
        walls = {name: statistics.median(run["wall"] for run in values) for name, values in runs.items()}
        ratio = walls["current"] / walls["base"]
        print_ratio("preset_floor", "current_over_base", ratio)


if __name__ == "__main__":
    main()
