"""Comparisons over seeds: the runner, the statistics, the rule for a difference that counts, and the tables.

One implementation for every comparison (``python -m mpn_tutorial compare``, the notebooks, bench/); they differ
only in how a run is obtained. Two variants run with the same seeds are compared seed by seed
(:func:`paired_difference`), a family of comparisons (:func:`compare`) Holm-corrected per metric.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from scipy import stats

from mpn_tutorial.config import TrainConfig
from mpn_tutorial.data.build import build_datasets
from mpn_tutorial.errors import UsageError
from mpn_tutorial.evaluation import attention_diagnostics, diagnostic_batches
from mpn_tutorial.training import TrainResult

SHARE_BATCHES = 10  # held-out P×K batches of test classes on which a run's attention is measured
PAIRED_KEYS = ("test_recall@1", "test_map@r")  # what every comparison pairs by seed
SPACE = "\u00a0"  # non-breaking: a table cell wraps between its parts, never inside one


# Runs: obtain and measure
def measure(result: TrainResult, test_dataset=None, share_batches: int = SHARE_BATCHES) -> dict:
    """What every run of a comparison reports: seed, test metrics, validation R@1 and best epoch, and for
    an MPN with layers its ``evaluation.attention_diagnostics`` on held-out batches of ``test_dataset``
    (default: the run's test classes)."""
    config, model = result.config, result.model
    measured = {"seed": config.seed, "best_epoch": result.best_epoch, "val_recall@1": result.val_metrics["recall@1"],
                "train_seconds": round(result.seconds, 1)}
    measured.update({f"test_{name}": value for name, value in result.test_metrics.items()
                     if isinstance(value, float)})
    if model.has_attention and share_batches:
        test = build_datasets(config).evaluation if test_dataset is None else test_dataset
        batches = diagnostic_batches(test, share_batches, config.classes_per_batch, config.samples_per_class)
        measured.update({f"test_{key}": value for key, value in attention_diagnostics(model, batches).items()
                         if not key.startswith("share_layer")})
    return measured


def run_comparison(variants: dict[str, TrainConfig], seeds: Sequence[int], run: Callable[[str, TrainConfig], dict],
                   report: Callable[[str, dict], None] | None = None) -> dict[str, list[dict]]:
    """Every variant with every seed: ``{variant: [one dict of measurements per seed]}``. ``run(variant,
    config)`` obtains a finished run (trains it, or loads it) and returns its measurements, usually
    :func:`measure` of its result; ``report(variant, measured)`` is called after each run."""
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for name, config in variants.items():
        for seed in seeds:
            measured = run(name, config.replace(seed=seed))
            results[name].append(measured)
            if report is not None:
                report(name, measured)
    return results


# Statistics
def summary(runs: list[dict], key: str) -> tuple[float, float, int] | None:
    """Mean, standard deviation (n - 1; 0 for one run) and n of ``key`` over a variant's runs (None when
    no run has it)."""
    values = [run[key] for run in runs if run.get(key) is not None and not math.isnan(run[key])]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


@dataclass(frozen=True)
class Paired:
    """Seed-paired differences d_s = x_s(variant) - x_s(control) of two lists of runs: mean, std, paired t."""

    mean: float
    std: float
    t: float
    n: int
    differences: tuple[float, ...]

    @property
    def p(self) -> float:
        """Two-sided p of the paired t with n - 1 degrees of freedom (1 without two seeds)."""
        if self.n < 2:
            return 1.0
        return 0.0 if math.isinf(self.t) else float(2 * stats.t.sf(abs(self.t), self.n - 1))


def paired_difference(runs: list[dict], reference: list[dict], key: str) -> Paired:
    """Seed-paired ``runs[key] - reference[key]`` (runs are matched by their "seed")."""
    by_seed = {run["seed"]: run[key] for run in reference if key in run}
    differences = tuple(run[key] - by_seed[run["seed"]] for run in runs if key in run and run["seed"] in by_seed)
    if not differences:
        raise UsageError(f"no seed has {key!r} in both lists")
    mean = statistics.fmean(differences)
    std = statistics.stdev(differences) if len(differences) > 1 else 0.0
    if std > 1e-9:
        t = mean / (std / math.sqrt(len(differences)))
    else:  # identical differences (e.g. the same run twice): no spread to divide by
        t = 0.0 if abs(mean) < 1e-12 else math.copysign(math.inf, mean)
    return Paired(mean, std, t, len(differences), differences)


def noise_band(groups: Sequence[Sequence[list[dict]]], key: str) -> float:
    """The noise band of ``key``: the pooled standard deviation of the seed-paired differences between
    runs of configurations that compute the same function. ``groups``: lists of such configurations'
    per-seed results; every pair within a group contributes its differences."""
    differences = [difference for group in groups for first, second in itertools.combinations(group, 2)
                   for difference in paired_difference(first, second, key).differences]
    if len(differences) < 2:
        raise UsageError("the noise band needs at least two paired differences")
    # the differences of same-function pairs have mean 0 in expectation: their spread is the root mean square
    return math.sqrt(statistics.fmean(d * d for d in differences))


def beyond_noise(mean: float, n: int, band: float) -> bool:
    """The rule for a difference standing out of the noise band: a mean of ``n`` paired differences
    beyond ``2 · band / √n`` (``band``: the per-seed spread of runs that compute the same function)."""
    return abs(mean) > 2 * band / math.sqrt(n)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-corrected p values of a family of comparisons (step-down, monotone, at most 1)."""
    order = sorted(p_values, key=p_values.get)
    corrected, running = {}, 0.0
    for rank, name in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[name]))
        corrected[name] = running
    return corrected


def compare(runs: dict[str, list[dict]], controls: dict[str, str], band: dict[str, float] | None = None,
            keys: Sequence[str] = PAIRED_KEYS) -> dict[str, dict[str, dict]]:
    """A family of comparisons ``{variant: its control}`` over per-seed ``runs`` by name:
    ``{variant: {key: {"control", "mean", "std", "t", "n", "p", "p_holm", "beyond_noise"}}}``, Holm-corrected
    over the family per metric; ``beyond_noise`` is None when no noise band was measured (``band``)."""
    found: dict[str, dict[str, dict]] = {variant: {} for variant in controls}
    for key in keys:
        pairs = {variant: paired_difference(runs[variant], runs[control], key) for variant, control in controls.items()}
        corrected = holm({variant: pair.p for variant, pair in pairs.items()})
        for variant, pair in pairs.items():
            found[variant][key] = {
                "control": controls[variant], "mean": pair.mean, "std": pair.std, "t": pair.t, "n": pair.n,
                "p": pair.p, "p_holm": corrected[variant],
                "beyond_noise": None if band is None else beyond_noise(pair.mean, pair.n, band[key])}
    return found


def counts(comparison: dict, key: str = "test_recall@1") -> bool:
    """Whether a comparison of :func:`compare` counts in ``key``: significant after Holm (p < 0.05) *and* beyond
    the noise band (:func:`beyond_noise`; the tables mark it ``*``; never without a measured band)."""
    found = comparison[key]
    return found["p_holm"] < 0.05 and bool(found["beyond_noise"])


def verdict(comparison: dict, key: str = "test_recall@1") -> str:
    """How a comparison stands, in words: "counts", "within the noise band", ... (:func:`counts`)."""
    found = comparison[key]
    if found["beyond_noise"] is None:
        return "no noise band measured"
    if not found["beyond_noise"]:
        return "within the noise band"
    return "significant and beyond the noise band" if counts(comparison, key) else \
        "beyond the noise band but not significant"


def describe(comparison: dict, key: str = "test_recall@1", unit: str = "points") -> str:
    """One comparison in words, with its numbers: ``-0.31 ± 0.42 points (5 seeds; Holm p 0.62, within the noise
    band)``; two decimals, as the tables' Δ, so that a mean can be read against the band's threshold."""
    found = comparison[key]
    return (f"{100 * found['mean']:+.2f} ± {100 * found['std']:.2f} {unit} ({found['n']} seeds; Holm p "
            f"{found['p_holm']:.2g}, {verdict(comparison, key)})")


def collapsed_runs(section: dict, margin: float = 0.05, key: str = "test_recall@1") -> list[tuple[str, int, float]]:
    """``(variant, seed, value)`` of the compared runs more than ``margin`` below the lowest run of any
    control in a study section: a mean over few seeds hides a seed that failed."""
    floor = min(run[key] for name, runs in section["runs"].items() if name not in section["comparisons"]
                for run in runs)
    return [(name, run["seed"], run[key]) for name in section["comparisons"] for run in section["runs"][name]
            if run[key] < floor - margin]


# The table
COUNTS = ("steps", "best_epoch")  # shown as whole numbers (their mean over seeds), not in percent
HEADINGS = {"steps": "steps", "best_epoch": "best epoch", "val_recall@1": "val R@1", "test_recall@1": "test R@1",
            "test_map@r": "test MAP@R", "test_share": "share", "test_self_weight": "self-weight",
            "test_score_spread": "score spread", "test_similarity_share": "backbone-similarity share",
            "recall@1": "R@1", "map@r": "MAP@R", "share": "share"}


def cell(runs: list[dict], key: str) -> str:
    """``mean ± std`` over a variant's runs (one run: its value alone): metrics in percent, shares, weights and
    spreads as fractions."""
    found = summary(runs, key)
    if found is None:
        return "—"
    mean, spread, n = found
    if key in COUNTS:
        return f"{mean:,.0f}"
    scale, digits = (1, 3) if ("share" in key or "weight" in key or "spread" in key) else (100, 1)
    text = f"{scale * mean:.{digits}f}"
    return text if n == 1 else f"{text}{SPACE}±{SPACE}{scale * spread:.{digits}f}"


def delta(comparison: dict, key: str) -> str:
    """A comparison of :func:`compare` in a cell: ``Δ ± std (t, Holm p)``, with * when it counts."""
    found = comparison[key]
    mark = " *" if counts(comparison, key) else ""
    return (f"{100 * found['mean']:+.2f}{SPACE}±{SPACE}{100 * found['std']:.2f} "
            f"(t{SPACE}{found['t']:+.1f}, p{SPACE}{found['p_holm']:.3f}){mark}")


def table(runs: dict[str, list[dict]], comparisons: dict[str, dict] | None = None,
          keys: Sequence[str] = ("val_recall@1", "test_recall@1", "test_map@r"), names: Sequence[str] | None = None,
          control: str | None = None) -> str:
    """A markdown table, one row per variant of ``runs`` (``{variant: [per-seed dicts]}``, in ``names``' order):
    the seeds, the summary of each of ``keys``, and, with ``comparisons`` (:func:`compare`), the row's control
    and its seed-paired Δ of test R@1 and MAP@R (``control``: its name when the comparisons do not say it)."""
    names = list(runs) if names is None else list(names)
    columns = ["variant", "seeds", *(HEADINGS.get(key, key) for key in keys)]
    if comparisons is not None:
        columns += ["control", *(f"Δ {HEADINGS[key]} (t, Holm p)" for key in PAIRED_KEYS)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name in names:
        row = [name, str(len(runs[name])), *(cell(runs[name], key) for key in keys)]
        if comparisons is not None:
            comparison = comparisons.get(name)
            against = (comparison[PAIRED_KEYS[0]].get("control") or control) if comparison else "—"
            row += [against, *(delta(comparison, key) if comparison else "" for key in PAIRED_KEYS)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


FOOTNOTE = ("Mean ± standard deviation over seeds. Δ: the seed-paired difference to the control, mean ± std of the "
            "per-seed differences (points), with its t and its p corrected for the comparisons of the table (Holm). "
            "* marks a difference that counts: Holm p < 0.05 and beyond the noise band (2 · band / √n).")


def write_comparison(path: str | Path, results: dict[str, list[dict]], header: dict) -> tuple[Path, Path]:
    """Write ``PATH.md`` (every variant against the first) and ``PATH.json`` (``header``, every run's
    numbers and the comparisons)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reference = next(iter(results))
    comparisons = compare(results, {name: reference for name in results if name != reference})
    keys = ("test_recall@1", "test_map@r", "test_share")
    lines = [f"# {header.get('title', 'Comparison')}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key != "title"]
    lines += ["", table(results, comparisons, keys), "", FOOTNOTE + " No noise band was measured here, so no "
              "difference is marked: run two variants that compute the same function to measure one.", ""]
    markdown, data = path.with_suffix(".md"), path.with_suffix(".json")
    markdown.write_text("\n".join(lines))
    data.write_text(json.dumps({**header, "results": results, "comparisons": comparisons}, indent=1, default=str))
    return markdown, data
