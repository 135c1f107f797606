"""Retrieval metrics at SOP scale: ``mpn_tutorial.metrics.retrieval_metrics`` vs faiss + pytorch-metric-learning.

Data: 60,502 L2-normalised 512-d float32 embeddings in 11,316 classes of 2-12 samples each (the
shape of Stanford Online Products' test set), clustered like real embeddings: 12 category centres
(SOP has 12 product categories), class centres scattered around them, samples scattered around
their class centre. Seeded, generated in chunks (so creating it does not inflate peak memory).

Two sides, measured in separate processes so each one's memory is its own:

- **library**: ``retrieval_metrics(emb, labels, ks=(1, 10, 100, 1000))``: Recall@K, MAP@R and
  R-precision, exact, in one blocked pass;
- **faiss**: pytorch-metric-learning's ``AccuracyCalculator`` (MAP@R, precision@1, R-precision; its
  k-NN is faiss' exact ``IndexFlatL2``) plus a faiss ``IndexFlatIP`` search with k = 1000 (+ self)
  whose neighbour labels give Recall@K. Both parts are timed together: that is what the library
  replaces.

The two sides run alternately (library, faiss, library, ...), one timed run per process after a
small warm-up, so a change of machine load hits both. Peak memory is the growth of the resident set
over its size right after the data was created (``ru_maxrss`` and a sampling thread).

Prints ``evaluation: library_over_faiss``, ``evaluation: library_seconds``, ``evaluation:
library_peak_gb`` (targets: <= 1.5, <= 30 s, <= 2 GB). Needs ``pip install faiss-cpu
pytorch-metric-learning`` (the ``bench`` extra). Run with ``nice -n 19``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F
from benchlib import print_header, print_ratio

from mpn_tutorial.metrics import retrieval_metrics

KS = (1, 10, 100, 1000)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def class_sizes(num_samples: int, num_classes: int, low: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """Class sizes in [low, high] summing to ``num_samples``, most classes small (like SOP).

    Sizes follow a truncated geometric law whose ratio is chosen (by bisection) to give the right
    mean; then random classes are grown or shrunk by one until the total is exact.
    """
    offsets = np.arange(high - low + 1)
    target_mean = num_samples / num_classes - low

    def mean_for(ratio: float) -> float:
        weights = ratio**offsets
        return float((offsets * weights).sum() / weights.sum())

    lo, hi = 1e-6, 10.0
    for _ in range(60):
        middle = (lo + hi) / 2
        lo, hi = (middle, hi) if mean_for(middle) < target_mean else (lo, middle)
    weights = lo**offsets
    sizes = low + rng.choice(offsets, size=num_classes, p=weights / weights.sum())
    while (difference := num_samples - int(sizes.sum())) != 0:
        step = 1 if difference > 0 else -1
        can_change = np.flatnonzero(sizes < high) if step > 0 else np.flatnonzero(sizes > low)
        chosen = rng.choice(can_change, size=min(abs(difference), len(can_change)), replace=False)
        sizes[chosen] += step
    return sizes


def make_embeddings(num_samples: int, num_classes: int, dim: int, noise: float, seed: int,
                    chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered, L2-normalised embeddings (N, dim) float32 and their labels (N,) int64, in shuffled order."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    sizes = class_sizes(num_samples, num_classes, low=2, high=12, rng=rng)
    categories = F.normalize(torch.randn(12, dim, generator=generator), dim=1)
    category_of_class = torch.randint(12, (num_classes,), generator=generator)
    # classes of one category share a direction (cosine ~0.3 between their centres): hard negatives
    offsets = F.normalize(torch.randn(num_classes, dim, generator=generator), dim=1)
    centres = F.normalize(0.65 * categories[category_of_class] + offsets, dim=1)
    labels = torch.from_numpy(np.repeat(np.arange(num_classes), sizes)[rng.permutation(num_samples)])
    embeddings = torch.empty(num_samples, dim)
    for start in range(0, num_samples, chunk):
        rows = slice(start, min(start + chunk, num_samples))
        scatter = torch.randn(rows.stop - rows.start, dim, generator=generator) * (noise / math.sqrt(dim))
        embeddings[rows] = F.normalize(centres[labels[rows]] + scatter, dim=1)
    return embeddings, labels


# ---------------------------------------------------------------------------------------------
# The two sides
# ---------------------------------------------------------------------------------------------


def library_side(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    result = retrieval_metrics(embeddings, labels, ks=KS)
    return {key: float(value) for key, value in result.items() if key.startswith(("recall", "map", "r_prec"))}


def faiss_side(embeddings: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    import faiss
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    start = time.perf_counter()
    calculator = AccuracyCalculator(include=("mean_average_precision_at_r", "precision_at_1", "r_precision"),
                                    k="max_bin_count", device=torch.device("cpu"))
    accuracy = calculator.get_accuracy(embeddings, labels)
    accuracy_calculator_seconds = time.perf_counter() - start
    # Recall@K from the 1000 nearest neighbours by inner product (the query itself comes first: drop it)
    points = embeddings.numpy()
    index = faiss.IndexFlatIP(points.shape[1])
    index.add(points)
    _, neighbours = index.search(points, max(KS) + 1)
    is_self = neighbours == np.arange(len(points))[:, None]
    missing_self = ~is_self.any(axis=1)
    is_self[missing_self, -1] = True  # a query beaten by 1001 exact duplicates: drop the last instead
    neighbours = neighbours[~is_self].reshape(len(points), max(KS))
    labels_numpy = labels.numpy()
    hits = labels_numpy[neighbours] == labels_numpy[:, None]
    first_hit_within = np.cumsum(hits, axis=1) > 0
    result = {f"recall@{k}": float(first_hit_within[:, k - 1].mean()) for k in KS}
    result["precision_at_1"] = float(accuracy["precision_at_1"])
    result["map@r"] = float(accuracy["mean_average_precision_at_r"])
    result["r_precision"] = float(accuracy["r_precision"])
    # where the time goes (reported, not compared)
    result["part_seconds_accuracy_calculator"] = accuracy_calculator_seconds
    result["part_seconds_knn_1000"] = time.perf_counter() - start - accuracy_calculator_seconds
    return result


SIDES = {"library": library_side, "faiss": faiss_side}


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE


class PeakSampler(threading.Thread):
    """Polls the resident set size every few milliseconds (catches peaks ru_maxrss attributes to data creation)."""

    def __init__(self, interval_s: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.interval_s, self.peak, self.running = interval_s, resident_bytes(), True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, resident_bytes())
            time.sleep(self.interval_s)


def run_worker(args: argparse.Namespace) -> None:
    """One timed run of one side, in this process; prints a JSON line for the parent."""
    side = SIDES[args.worker]
    if args.worker == "faiss":
        import faiss

        faiss.omp_set_num_threads(torch.get_num_threads())  # the same 2 threads as the library
    embeddings, labels = make_embeddings(args.samples, args.classes, args.dim, args.noise, args.seed)
    side(embeddings[: args.warmup_samples], labels[: args.warmup_samples])  # thread pools, lazy imports
    gc.collect()
    baseline = resident_bytes()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    metrics = side(embeddings, labels)
    seconds = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # ru_maxrss is exact unless the run stayed below the peak reached while creating the data
    peak = max(sampler.peak, maxrss_after if maxrss_after > maxrss_before else 0)
    print(json.dumps({"side": args.worker, "seconds": seconds, "peak_bytes": peak - baseline,
                      "baseline_bytes": baseline, "creation_overshoot_bytes": maxrss_before - baseline,
                      "metrics": metrics}))


# ---------------------------------------------------------------------------------------------
# Parent: alternate the sides in fresh processes, compare
# ---------------------------------------------------------------------------------------------


def run_side(side: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", side, "--samples", str(args.samples), "--classes",
               str(args.classes), "--dim", str(args.dim), "--noise", str(args.noise), "--seed", str(args.seed),
               "--warmup-samples", str(args.warmup_samples)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"the {side} worker failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def compare_metrics(library: dict[str, float], other: dict[str, float], num_queries: int) -> None:
    """Print both sides' values; a difference is expressed in queries (1 query = 1/N)."""
    pairs = [(f"recall@{k}", f"recall@{k}") for k in KS] + [
        ("recall@1", "precision_at_1"), ("map@r", "map@r"), ("r_precision", "r_precision")]
    for mine, theirs in pairs:
        difference = library[mine] - other[theirs]
        print(f"# metric {mine:>11} library {library[mine]:.6f} | faiss/PML {theirs} {other[theirs]:.6f} | "
              f"diff {difference:+.2e} (= {difference * num_queries:+.1f} queries' worth)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="6,000 embeddings: check that the script runs")
    parser.add_argument("--samples", type=int, default=60_502)
    parser.add_argument("--classes", type=int, default=11_316)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--noise", type=float, default=2.0,
                        help="scatter around a class centre (relative norm); 2.0 gives R@1 ~0.8, like SOP")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side (one process each)")
    parser.add_argument("--warmup-samples", type=int, default=4_000, help="size of the untimed warm-up run")
    parser.add_argument("--worker", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args)
        return
    if args.quick:
        args.samples, args.classes, args.repeats, args.warmup_samples = 6_000, 1_122, 1, 500

    print_header("retrieval metrics at SOP scale (leave-one-out)", {
        "data": f"{args.samples} x {args.dim} float32, {args.classes} classes of 2-12, seed {args.seed}",
        "ks": KS,
        "timing": f"median of {args.repeats} runs per side, alternating, one process each, after a "
                  f"{args.warmup_samples}-sample warm-up run",
    })
    runs: dict[str, list[dict]] = {"library": [], "faiss": []}
    for _ in range(args.repeats):
        for side in runs:
            run = run_side(side, args)
            runs[side].append(run)
            parts = ", ".join(f"{key[len('part_seconds_'):]} {value:.1f} s"
                              for key, value in run["metrics"].items() if key.startswith("part_seconds_"))
            print(f"# run {side}: {run['seconds']:.2f} s{f' ({parts})' if parts else ''}, peak "
                  f"+{run['peak_bytes'] / 1e9:.3f} GB over {run['baseline_bytes'] / 1e9:.3f} GB after data "
                  "creation", flush=True)
    compare_metrics(runs["library"][0]["metrics"], runs["faiss"][0]["metrics"], args.samples)
    seconds = {side: statistics.median(run["seconds"] for run in side_runs) for side, side_runs in runs.items()}
    peak_gb = {side: max(run["peak_bytes"] for run in side_runs) / 1e9 for side, side_runs in runs.items()}
    print(f"# faiss path: {seconds['faiss']:.2f} s, peak +{peak_gb['faiss']:.3f} GB")
    print_ratio("evaluation", "library_over_faiss", seconds["library"] / seconds["faiss"])
    print_ratio("evaluation", "library_seconds", seconds["library"])
    print_ratio("evaluation", "library_peak_gb", peak_gb["library"])


if __name__ == "__main__":
    main()
