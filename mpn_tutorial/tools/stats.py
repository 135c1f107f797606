"""The experiment runner: variants × seeds, each run measured the same way, and the seed-paired table.

One implementation for every comparison the package makes: ``python -m mpn_tutorial compare``
(run folders, for benchmarks on GPUs), notebook 06 (the run store) and the glyph studies in bench/.
They differ only in how a run is obtained (a function ``config -> TrainResult``); the measurements,
the statistics and the tables are these.

Statistics. A run's test metrics depend on its seed (initialisation, batches, dropout); two variants
run with the same seeds are compared **seed by seed**: the paired difference d_s = x_s(variant) -
x_s(reference), its mean, standard deviation and t = mean / (std / sqrt(n)) (n - 1 degrees of
freedom; ``|t| > 2.78`` for 5 seeds, 4.30 for 3, at the usual two-sided 95%). A difference counts only
next to the **noise band**: the spread of paired differences between configurations that compute the
same function (``noise_band``).
"""

from __future__ import annotations

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


def measure(result: TrainResult, test_dataset=None, share_batches: int = SHARE_BATCHES) -> dict:
    """What every run of a comparison reports: seed, test metrics, validation R@1 and best epoch, and
    for an MPN with layers its attention on held-out batches of ``test_dataset`` (default: the run's
    test classes) (``evaluation.attention_diagnostics``: share, self-weight, score spread, and the
    backbone-similarity reference)."""
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
    """Every variant with every seed: ``{variant: [one dict of measurements per seed]}``.

    ``run(variant, config)`` obtains a finished run (trains it, or loads it from a store or a run
    folder) and returns its measurements, usually :func:`measure` of its result plus whatever the
    caller adds; ``report(variant, measured)`` is called after each run (e.g. to print a line).
    """
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for name, config in variants.items():
        for seed in seeds:
            measured = run(name, config.replace(seed=seed))
            results[name].append(measured)
            if report is not None:
                report(name, measured)
    return results


@dataclass(frozen=True)
class Paired:
    """The seed-paired difference of two lists of per-seed results (module docstring)."""

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

    @property
    def significant(self) -> bool:
        """p below 0.05 (``|t|`` above the two-sided 95% critical value for n - 1 degrees of freedom)."""
        return self.p < 0.05


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
    differences = []
    for group in groups:
        for first in range(len(group)):
            for second in range(first + 1, len(group)):
                differences += paired_difference(group[first], group[second], key).differences
    if len(differences) < 2:
        raise UsageError("the noise band needs at least two paired differences")
    # the differences of same-function pairs have mean 0 in expectation: their spread is the root mean square
    return math.sqrt(statistics.fmean(d * d for d in differences))


def mean_std(runs: list[dict], key: str) -> tuple[float, float] | None:
    values = [run[key] for run in runs if key in run and run[key] is not None and not math.isnan(run[key])]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


HEADINGS = {"test_recall@1": "R@1 (%)", "test_map@r": "MAP@R (%)", "test_share": "share",
            "test_similarity_share": "backbone-similarity share", "test_self_weight": "self-weight",
            "test_score_spread": "score spread"}


def cell(runs: list[dict], key: str) -> str:
    """``mean ± std`` over seeds: metrics in percent, shares, weights and spreads as fractions (:func:`study_cell`)."""
    return study_cell(runs, key)


def paired_table(results: dict[str, list[dict]], controls: dict[str, str],
                 keys: Sequence[str] = ("test_recall@1", "test_map@r"), band: dict[str, float] | None = None) -> str:
    """A markdown table: per variant the mean ± std over seeds of ``keys``, its control
    (``controls[variant]``, a variant of ``results``; none for a reference row) and the seed-paired
    difference of R@1 and MAP@R to it with t. ``*`` marks ``|t|`` above the 95% value that is also larger
    than twice the noise band's standard error (``band``: per key, see :func:`noise_band`)."""
    paired_keys = [key for key in keys if key in ("test_recall@1", "test_map@r")]
    columns = ["variant", "seeds", *(HEADINGS.get(k, k) for k in keys), "control",
               *(f"Δ {HEADINGS.get(k, k)} (t)" for k in paired_keys)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name, runs in results.items():
        control = controls.get(name)
        differences = []
        for key in paired_keys:
            if control is None:
                differences.append("")
                continue
            paired = paired_difference(runs, results[control], key)
            stands_out = band is None or beyond_noise(paired.mean, paired.n, band[key])
            differences.append(f"{100 * paired.mean:+.1f} ± {100 * paired.std:.1f} ({paired.t:+.1f})"
                               + (" *" if paired.significant and stands_out else ""))
        lines.append("| " + " | ".join([name, str(len(runs)), *(cell(runs, k) for k in keys), control or "—",
                                        *differences]) + " |")
    return "\n".join(lines)


def comparison_table(results: dict[str, list[dict]],
                     keys: Sequence[str] = ("test_recall@1", "test_map@r", "test_share"), reference: str | None = None,
                     band: dict[str, float] | None = None) -> str:
    """:func:`paired_table` with every variant paired against one ``reference`` (default: the first)."""
    reference = reference or next(iter(results))
    table = paired_table(results, {name: reference for name in results if name != reference}, keys, band)
    return table + ("\n\nMean ± standard deviation over seeds. Δ: the seed-paired difference to the control, "
                    "mean ± std of the per-seed differences, with t; * marks |t| above the two-sided 95% value "
                    "for n − 1 degrees of freedom.")


def write_comparison(path: str | Path, results: dict[str, list[dict]], header: dict,
                     **table_options) -> tuple[Path, Path]:
    """Write ``PATH.md`` (the table) and ``PATH.json`` (``header`` and every run's numbers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = comparison_table(results, **table_options)
    lines = [f"# {header.get('title', 'Comparison')}", ""]
    lines += [f"- {key}: {value}" for key, value in header.items() if key != "title"]
    markdown, data = path.with_suffix(".md"), path.with_suffix(".json")
    markdown.write_text("\n".join(lines + ["", table, ""]))
    data.write_text(json.dumps({**header, "results": results}, indent=1, default=str))
    return markdown, data


# --------------------------------------------------------------------------------------------
# The messages study's sections (bench/messages_study.py writes them; notebooks and README read them)
# --------------------------------------------------------------------------------------------

STUDY_HEADINGS = {"val_recall@1": "val R@1", "test_recall@1": "test R@1", "test_map@r": "test MAP@R",
                  "test_share": "share", "test_self_weight": "self-weight",
                  "test_similarity_share": "backbone-similarity share", "test_score_spread": "score spread"}


def study_cell(runs: list[dict], key: str) -> str:
    """``mean ± std`` over a section's per-seed runs: metrics in percent, shares and weights as fractions."""
    values = [run[key] for run in runs if run.get(key) is not None]
    if not values:
        return "—"
    scale, digits = (1, 3) if ("share" in key or "weight" in key or "spread" in key) else (100, 1)
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    # non-breaking spaces: a narrow column never splits "64.1 ±" from its "1.0"
    return f"{scale * statistics.fmean(values):.{digits}f}\u00a0±\u00a0{scale * spread:.{digits}f}"


def beyond_noise(mean: float, n: int, band: float) -> bool:
    """The rule for a difference standing out of the noise band: a mean of ``n`` paired differences
    beyond ``2 · band / √n`` (``band``: the per-seed spread of runs that compute the same function)."""
    return abs(mean) > 2 * band / math.sqrt(n)


def counts(comparison: dict, key: str = "test_recall@1") -> bool:
    """Whether a study comparison counts in ``key``: significant after Holm *and* beyond the noise band (the
    tables mark it ``*``)."""
    return _stands_out(comparison[key])


def _stands_out(found: dict) -> bool:
    return found["p_holm"] < 0.05 and found["beyond_noise"]


def study_delta(comparison: dict) -> str:
    """A comparison of the study: ``Δ ± std (t, Holm p)``, with * when Holm p < 0.05 and beyond the noise band."""
    mark = " *" if _stands_out(comparison) else ""
    space = "\u00a0"  # non-breaking: the cell wraps between its parts, never inside one
    return (f"{100 * comparison['mean']:+.1f}{space}±{space}{100 * comparison['std']:.1f} "
            f"(t{space}{comparison['t']:+.1f}, p{space}{comparison['p_holm']:.3f}){mark}")


def study_table(section: dict, names: Sequence[str] | None = None,
                keys: Sequence[str] = ("val_recall@1", "test_recall@1", "test_map@r"),
                control: str | None = None) -> str:
    """A markdown table of a study section (``{"runs": {variant: [per-seed dicts]}, "comparisons": {...}}``):
    per variant the mean ± std of ``keys``, its control and its seed-paired Δ of test R@1 and MAP@R.
    ``control``: the control's name when the section's comparisons do not say it (the test-time views)."""
    names = list(section["runs"]) if names is None else list(names)
    comparisons = section.get("comparisons", {})
    columns = ["variant", "seeds", *(STUDY_HEADINGS.get(key, key) for key in keys), "control",
               "Δ test R@1 (t, Holm p)", "Δ test MAP@R (t, Holm p)"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for name in names:
        runs, comparison = section["runs"][name], comparisons.get(name)
        deltas = [study_delta(comparison[key]) if comparison else "" for key in ("test_recall@1", "test_map@r")]
        against = (comparison["test_recall@1"].get("control") or control) if comparison else "—"
        lines.append("| " + " | ".join([name, str(len(runs)), *(study_cell(runs, key) for key in keys), against,
                                        *deltas]) + " |")
    return "\n".join(lines)


def collapsed_runs(section: dict, margin: float = 0.05, key: str = "test_recall@1") -> list[tuple[str, int, float]]:
    """``(variant, seed, value)`` of the compared runs more than ``margin`` below the lowest run of any
    control in a study section: a mean over few seeds hides a seed that failed."""
    floor = min(run[key] for name, runs in section["runs"].items() if name not in section["comparisons"]
                for run in runs)
    return [(name, run["seed"], run[key]) for name in section["comparisons"] for run in section["runs"][name]
            if run[key] < floor - margin]


def describe(comparison: dict, key: str = "test_recall@1", unit: str = "points") -> str:
    """One comparison in words, with its numbers: ``-0.3 ± 0.4 points (5 seeds; Holm p 0.62, within the noise
    band)``."""
    found = comparison[key]
    if not found["beyond_noise"]:
        verdict = "within the noise band"
    elif counts(comparison, key):
        verdict = "significant and beyond the noise band"
    else:
        verdict = "beyond the noise band but not significant"
    return (f"{100 * found['mean']:+.1f} ± {100 * found['std']:.1f} {unit} ({found['n']} seeds; Holm p "
            f"{found['p_holm']:.2g}, {verdict})")


__all__ = ["STUDY_HEADINGS", "Paired", "beyond_noise", "cell", "collapsed_runs", "comparison_table", "counts",
           "describe", "mean_std", "measure", "noise_band",
           "paired_difference", "paired_table", "run_comparison", "study_cell", "study_delta", "study_table",
           "write_comparison"]
