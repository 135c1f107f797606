"""The messages study: what passing messages over the batch does on the glyphs, measured where training has plateaued.

Every comparison is seed-paired against a control that removes exactly one thing, next to the
**noise band**: the spread of paired differences between messages-off configurations that compute
the same function (they differ only in how unused attention maps start, which shifts the random
draws of the rest). A difference counts as beyond the noise band when |mean Δ| > 2 · band / sqrt(n).
Each family of comparisons is corrected for its size (Holm); the p values printed are the corrected ones.

1. **Budget curve** (``budget_curve``): the headline variants at multiples of the preset's budget
   (600 steps; schedule and warm-up moved in proportion, ``presets.with_budget``), seeds 0-2.
   **B\\*** (``converged_budget``) is the smallest budget where doubling it moves the validation R@1 of
   every headline variant (seed-paired mean) by less than the validation noise band at that budget.
2. **At B\\*, 5 seeds**: messages on/off for both settings (``on_off``), the decomposition of the head
   (``decomposition``: cross-entropy alone, a second classifier, L2 normalisation, BatchNorm, the input
   map, the feed-forward block, the messages), the normalised softmax (``normalised_softmax``, its
   temperature chosen on the validation classes), attention given by the labels (``oracle``, with and
   without the sample itself: a control, one fixed pattern), W_o = 0 instead of the warm-up
   (``zero_init_out``), learned attention against the plain batch mean (``aggregation``), and the
   paper's heads × layers (``ablation_heads_layers``, 3 seeds, each with its messages-off control).
3. **Test time** (``episodes_tuned``): within held-out P×K episodes and over k-reciprocal
   neighbourhoods, the MPN against the backbone, against query expansion and the backbone-similarity
   twin of the MPN (the backbone's own similarity as attention through the trained W_v, W_o), with every
   free parameter (k, alpha, the twin's sharpness) chosen on validation-class episodes and
   neighbourhoods, from grids that reach past the picks (the report names any pick at an open edge).

Runs train in a run store (``--store``, keyed by the training code), two at a time with one thread
each when ``--parallel 2`` (``bench/side_by_side.py`` measured that 1.4× faster on 2 cores); each run's
measurements are cached beside it (keyed by the run and this measuring code), so a stopped study
resumes. Writes ``bench/messages_study.md`` and ``mpn_tutorial/results/messages_study.json`` (shipped
with the package; notebooks 03, 04, 06 and 07 read it).

    nice -n 5 python bench/messages_study.py --parallel 2      # hours on 2 cores from scratch
    python bench/messages_study.py --quick --output /tmp/study --store /tmp/store   # the machinery, ~1 min
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

SEEDS_CURVE, SEEDS = (0, 1, 2), (0, 1, 2, 3, 4)
HEADLINE = ("published", "published, messages off", "glyphs-attention", "glyphs-attention, messages off",
            "cross-entropy alone", "+ BNNeck classifier on the normalised embedding")
NOISE_GROUPS = (("published, messages off", "published, messages off, identity W_v W_o (unused)"),
                ("glyphs-attention, messages off", "glyphs-attention, messages off, random W_v W_o (unused)"))
EPISODES, EPISODE_SEED, VALIDATION_SEED = 50, 5000, 7000
# the test-time grids, searched on the validation classes; each reaches past the value it picks (a class
# has 48 images, so k = 80 neighbourhoods reach beyond the class), so that no pick sits at a grid's edge
QE_K, QE_ALPHA, TWIN_SHARPNESS = (5, 10, 20, 40, 80), (0.0, 1.0, 3.0, 5.0, 10.0, 20.0), (1.0, 3.0, 10.0, 30.0)
NEIGHBOURHOOD_ALPHA = (0.5, 1.0, 3.0, 5.0)  # alpha-QE over neighbourhoods (alpha = 0 is the average QE row)
NORMALISED_TEMPERATURES = (0.05, 0.1, 0.2)
TEST_TIME_MODELS = ("published", "published, messages off", "glyphs-attention", "glyphs-attention, messages off")


# --------------------------------------------------------------------------------------------
# The configurations
# --------------------------------------------------------------------------------------------


def configurations(base, attention) -> dict[str, object]:
    """Every configuration of the study at the preset's budget, by name."""
    published_off, attention_off = base.without_messages(), attention.without_messages()
    head = dict(mpn_layers=0, mpn_input_map=False)  # the MPN head as a second classifier only
    found = {
        "published": base,
        "published, messages off": published_off,
        "published, messages off, identity W_v W_o (unused)": published_off.replace(mpn_identity_values=True),
        "glyphs-attention": attention,
        "glyphs-attention, messages off": attention_off,
        "glyphs-attention, messages off, random W_v W_o (unused)": attention_off.replace(mpn_identity_values=False),
        "cross-entropy alone": base.replace(loss="ce"),
        "+ second classifier (linear, on the raw embedding)": base.replace(
            **head, mpn_normalize_input=False, mpn_classifier="linear"),
        "+ L2 normalisation of its input": base.replace(**head, mpn_classifier="linear"),
        "+ BNNeck classifier on the normalised embedding": base.replace(**head),
        "+ input map": base.replace(mpn_layers=0),
        "oracle attention (labels, self included)": attention.replace(mpn_attention="oracle"),
        "oracle attention (labels, without self)": attention.replace(mpn_attention="oracle_without_self"),
        "zero W_o, messages from step 1": attention.replace(mpn_zero_out=True, message_warmup_epochs=0),
        "published, uniform mean over the batch": base.replace(mpn_attention="uniform"),
        "glyphs-attention, uniform mean over the batch": attention.replace(mpn_attention="uniform"),
    }
    for temperature in NORMALISED_TEMPERATURES:
        found[f"normalised softmax, T = {temperature:g}"] = base.replace(
            loss="ce", backbone_classifier="cosine", temperature=temperature)
    for layers in (1, 2):
        for heads in (1, 2, 8):
            found[f"{layers} × {heads}"] = base.replace(mpn_layers=layers, mpn_heads=heads)
        found[f"{layers} layer(s), messages off"] = base.replace(mpn_layers=layers).without_messages()
    return found


# --------------------------------------------------------------------------------------------
# Obtaining runs (in worker processes) and measuring them
# --------------------------------------------------------------------------------------------

_WORKER: dict = {}


def _start_worker(threads: int, data_root: str, quick: bool) -> None:
    os.environ["MPN_TUTORIAL_THREADS"] = str(threads)  # before the package pins threads and keys runs
    from mpn_tutorial.tools.runtime import pin_threads

    pin_threads(threads)
    _WORKER.update(data_root=data_root, quick=quick)


def _datasets(config):
    import numpy as np

    from mpn_tutorial.data.build import build_datasets
    from mpn_tutorial.data.splits import ClassSubset

    if "datasets" not in _WORKER:
        datasets = build_datasets(config)
        if _WORKER["quick"]:  # a few test classes, so that evaluating is fast
            datasets.test = ClassSubset(datasets.test, np.arange(30))
        _WORKER["datasets"] = datasets
    return _WORKER["datasets"]


def measuring_code(test_time: bool) -> str:
    """A hash of the code that measures a run: this script's ``obtain``, the experiment runner's ``measure``,
    evaluation and metrics, and (``test_time``) the test-time measurements with their grids; not the
    report, so editing it keeps the cache, and editing the test-time part re-measures only those runs."""
    import inspect

    import mpn_tutorial.evaluation
    import mpn_tutorial.metrics
    import mpn_tutorial.tools.stats

    parts = [inspect.getsource(obtain), inspect.getsource(mpn_tutorial.tools.stats.measure),
             inspect.getsource(mpn_tutorial.evaluation), inspect.getsource(mpn_tutorial.metrics)]
    if test_time:
        parts += [inspect.getsource(test_time_measurements),
                  repr((EPISODES, EPISODE_SEED, VALIDATION_SEED, QE_K, QE_ALPHA, TWIN_SHARPNESS, NEIGHBOURHOOD_ALPHA))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def obtain(job: tuple[str, dict, str, bool]) -> dict:
    """Train (or load from the store) one run and measure it; runs in a worker process."""
    name, settings, store, test_time = job
    from mpn_tutorial.config import TrainConfig
    from mpn_tutorial.tools.run_store import cache_key, train_cached
    from mpn_tutorial.tools.stats import measure

    config = TrainConfig.from_dict(settings)
    path = Path(store) / f"{cache_key(config)}.measured-{measuring_code(test_time)}{'-tt' if test_time else ''}.json"
    if path.exists():
        return json.loads(path.read_text())
    datasets = _datasets(config)
    start = time.perf_counter()
    result = train_cached(config, store, datasets=datasets, progress=False)
    measured = measure(result, datasets.test, 2 if _WORKER["quick"] else 10)
    measured.update(steps=config.steps, val_recall1_per_epoch=[row["val"]["recall@1"] for row in result.history],
                    val_map_at_r=result.val_metrics["map@r"])
    if test_time:
        measured["test_time"] = test_time_measurements(result.model, config, datasets, _WORKER["quick"])
    measured["obtain_seconds"] = round(time.perf_counter() - start, 1)  # training (if not stored) and measuring
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(measured))
    return measured


def test_time_measurements(model, config, datasets, quick: bool) -> dict:
    """Within-episode retrieval and neighbourhood refinement, every free parameter chosen on the
    validation classes (the backbone is every row's control)."""
    import torch

    from mpn_tutorial import metrics
    from mpn_tutorial.controls import similarity_twin
    from mpn_tutorial.evaluation import diagnostic_batches, embed_dataset, refine_embeddings, run_mpn

    count = 3 if quick else EPISODES
    P, K = config.classes_per_batch, config.samples_per_class
    model.eval()

    def episodes(dataset, seed):
        with torch.no_grad():
            return [(model.retrieval_embeddings(images), labels)
                    for images, labels in diagnostic_batches(dataset, count, P, K, seed=seed)]

    def alpha_qe(embeddings, alpha):  # alpha-QE within the episode: every other sample, weights cos^alpha
        return refine_embeddings(None, embeddings, len(embeddings) - 1, "similarity_weighted", alpha)

    def views(embeddings, alpha, sharpness, mpn_alpha, only=None):
        found = {"backbone": lambda: embeddings, "alpha-QE within the episode": lambda: alpha_qe(embeddings, alpha)}
        if model.mpn is not None:
            found.update({"MPN over the episode": lambda: run_mpn(model, embeddings, messages=True),
                          "MPN without messages": lambda: run_mpn(model, embeddings, messages=False),
                          "alpha-QE after the MPN": lambda: alpha_qe(run_mpn(model, embeddings), mpn_alpha)})
            if model.has_attention:
                found["backbone-similarity twin of the MPN"] = lambda: similarity_twin(model, embeddings, sharpness)
        return {name: view() for name, view in found.items() if only is None or name == only}

    def score(batches, alpha=1.0, sharpness=1.0, mpn_alpha=1.0, only=None) -> dict[str, tuple[float, float]]:
        totals: dict[str, list] = {}
        for embeddings, labels in batches:
            for name, view in views(embeddings, alpha, sharpness, mpn_alpha, only).items():
                found = metrics.retrieval_metrics(view, labels, (1,))
                totals.setdefault(name, []).append((found["recall@1"], found["map@r"]))
        return {name: (statistics.fmean(r for r, _ in v), statistics.fmean(m for _, m in v))
                for name, v in totals.items()}

    # each free parameter chosen on validation-class episodes, by MAP@R
    validation = episodes(datasets.val, VALIDATION_SEED)

    def best(values, view, parameter):
        return max(values, key=lambda value: score(validation, only=view, **{parameter: value})[view][1])

    chosen = {"alpha": best(QE_ALPHA, "alpha-QE within the episode", "alpha")}
    if model.mpn is not None:
        chosen["mpn_alpha"] = best(QE_ALPHA, "alpha-QE after the MPN", "mpn_alpha")
    if model.has_attention:
        chosen["sharpness"] = best(TWIN_SHARPNESS, "backbone-similarity twin of the MPN", "sharpness")
    test = score(episodes(datasets.test, EPISODE_SEED), chosen["alpha"], chosen.get("sharpness", 1.0),
                 chosen.get("mpn_alpha", 1.0))
    result = {"chosen_on_validation": chosen,
              "episodes": {name: {"test_recall@1": r, "test_map@r": m} for name, (r, m) in test.items()}}

    # k-reciprocal neighbourhoods of the whole test set: k (and alpha) chosen on the validation classes
    def refined(embeddings, labels, method, k, alpha_value):
        shown = embeddings if method is None else refine_embeddings(model, embeddings, k, method, alpha_value)
        found = metrics.retrieval_metrics(shown, labels, (1,))
        return found["recall@1"], found["map@r"]

    methods = {"average QE": "mean", "alpha-QE": "similarity_weighted"}
    if model.mpn is not None:
        methods["MPN refinement"] = "mpn"
    val_embeddings, val_labels = embed_dataset(model, datasets.val)
    test_embeddings, test_labels = embed_dataset(model, datasets.test)
    neighbourhoods = {"backbone": dict(zip(("test_recall@1", "test_map@r"),
                                           refined(test_embeddings, test_labels, None, 0, 0)))}
    chosen_k = {}
    for name, method in methods.items():
        options = [(k, a) for k in QE_K for a in (NEIGHBOURHOOD_ALPHA if method == "similarity_weighted" else (0.0,))]
        best = max(options, key=lambda option: refined(val_embeddings, val_labels, method, *option)[1])
        chosen_k[name] = {"k": best[0], "alpha": best[1]}
        neighbourhoods[name] = dict(zip(("test_recall@1", "test_map@r"),
                                        refined(test_embeddings, test_labels, method, *best)))
    result.update(neighbourhoods=neighbourhoods, neighbourhoods_chosen_on_validation=chosen_k)
    return result


class Study:
    """Obtains every (name, budget, seed) the sections ask for, in parallel worker processes."""

    def __init__(self, configs: dict, store: Path, parallel: int, data_root: str, quick: bool, worker=None) -> None:
        from mpn_tutorial.tools.runtime import thread_count

        self.configs, self.store, self.quick = configs, store, quick
        self.worker = worker or obtain  # what a worker process does with a job (bench/lesson_study.py adds to it)
        threads = 1 if parallel > 1 else thread_count()
        self.pool = ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_start_worker, initargs=(threads, data_root, quick))
        self.threads, self.measured = threads, {}

    def get(self, requests: list[tuple[str, float, int]], test_time: tuple[str, ...] = ()) -> None:
        """Obtain ``(name, budget factor, seed)`` runs not obtained yet (``test_time``: names that also get
        the test-time measurements), two at a time."""
        from mpn_tutorial.presets import with_budget

        wanted = [(name, budget, seed) for name, budget, seed in dict.fromkeys(requests)
                  if (name, budget, seed) not in self.measured
                  or (name in test_time and "test_time" not in self.measured[(name, budget, seed)])]
        jobs = [(name, with_budget(self.configs[name], budget).replace(seed=seed).to_dict(), str(self.store),
                 name in test_time) for name, budget, seed in wanted]
        for (name, budget, seed), measured in zip(wanted, self.pool.map(self.worker, jobs)):
            self.measured[(name, budget, seed)] = measured
            print(f"  {name:62s} ×{budget:g} seed {seed}  val R@1 {100 * measured['val_recall@1']:5.1f}  test R@1 "
                  f"{100 * measured['test_recall@1']:5.1f}  best epoch {measured['best_epoch']:2d}/"
                  f"{len(measured['val_recall1_per_epoch'])}  ({measured['train_seconds']:.0f} s)", flush=True)

    def runs(self, name: str, budget: float, seeds=SEEDS) -> list[dict]:
        return [self.measured[(name, budget, seed)] for seed in seeds if (name, budget, seed) in self.measured]


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def family(study: Study, budget: float, controls: dict[str, str], band: dict[str, float], seeds=SEEDS) -> dict:
    """``stats.compare`` on the study's runs at a budget: a family of comparisons, Holm-corrected."""
    from mpn_tutorial.tools.stats import compare

    names = set(controls) | set(controls.values())
    return compare({name: study.runs(name, budget, seeds) for name in names}, controls, band)


def band_at(study: Study, budget: float, key: str, seeds) -> float:
    from mpn_tutorial.tools.stats import noise_band

    return noise_band([[study.runs(a, budget, seeds), study.runs(b, budget, seeds)] for a, b in NOISE_GROUPS], key)


# --------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny networks, short runs, 2 seeds (~1 min)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[1, 2, 4, 8],
                        help="multiples of the preset's budget on the curve (default 1 2 4 8)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each when above 1)")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "messages_study",
                        help="writes OUTPUT.md; the JSON goes to mpn_tutorial/results/ (default) or OUTPUT.json")
    parser.add_argument("--store", type=Path, default=REPO_ROOT / "data" / "study_runs")
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / "data")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite OUTPUT.md and the budget figure from the study's JSON, training nothing")
    parser.add_argument("--stop-after", choices=("curve", "headline", "baselines", "ablations", "all"), default="all",
                        help="stop after a phase (the study resumes from its store)")
    args = parser.parse_args(argv)
    output_json = (REPO_ROOT / "mpn_tutorial" / "results" / "messages_study.json" if args.output ==
                   parser.get_default("output") else args.output.with_suffix(".json"))
    if args.report_only:
        study = json.loads(output_json.read_text())
        print(write_report(args.output.with_suffix(".md"), study))
        if args.output == parser.get_default("output"):
            write_readme(study)
        return 0
    os.environ.setdefault("MPN_TUTORIAL_THREADS", "2")
    from mpn_tutorial.tools.runtime import pin_threads

    pin_threads()
    import torch

    from mpn_tutorial.presets import GLYPHS, GLYPHS_ATTENTION

    start = time.perf_counter()
    base = GLYPHS.replace(data_root=str(args.data_root))
    attention = GLYPHS_ATTENTION.replace(data_root=str(args.data_root))
    global SEEDS_CURVE, SEEDS, SEEDS_ABLATION
    if args.quick:
        tiny = dict(glyph_channels=(8, 16), embedding_dim=16, mpn_ff_dim=32, epochs=4, batches_per_epoch=3,
                    lr_decay_epochs=(3,))
        base = base.replace(**tiny)
        attention = attention.replace(**tiny, message_warmup_epochs=2, mpn_input_scale=2 * math.sqrt(16))
        SEEDS_CURVE, SEEDS, SEEDS_ABLATION = (0, 1), (0, 1), (0, 1)
        args.budgets = args.budgets[:2]
    configs = configurations(base, attention)
    study = Study(configs, args.store, args.parallel, str(args.data_root), args.quick)
    budgets = sorted(args.budgets)
    print(f"messages study: {len(budgets)} budgets × {len(SEEDS_CURVE)} seeds on the curve, {len(SEEDS)} at B*; "
          f"{args.parallel} at a time, {study.threads} thread(s) each; store {args.store}", flush=True)

    # 1. the budget curve, and B*
    print("# budget curve", flush=True)
    curve_names = HEADLINE + tuple(second for _, second in NOISE_GROUPS)
    study.get([(name, budget, seed) for budget in budgets for name in curve_names for seed in SEEDS_CURVE
               if budget != budgets[-1] or name in HEADLINE])
    converged = converged_budget(study, budgets)
    b_star = converged["factor"] or budgets[-1]
    print(f"B* = ×{b_star:g} ({converged['steps']} steps): {converged['rule']}", flush=True)
    phases = {"curve": 0, "headline": 1, "baselines": 2, "ablations": 3, "all": 4}
    sections: dict = {"budget_curve": curve(study, budgets, curve_names), "converged_budget": converged}

    # 2. the headline variants at B*, 5 seeds
    headline = HEADLINE + tuple(second for _, second in NOISE_GROUPS) + (
        "+ input map", "oracle attention (labels, self included)", "oracle attention (labels, without self)",
        "zero W_o, messages from step 1")
    if phases[args.stop_after] >= 1:
        print("# headline at B*", flush=True)
        study.get([(name, b_star, seed) for name in headline for seed in SEEDS], test_time=TEST_TIME_MODELS)
    # 4. baselines: the normalised softmax (temperature chosen on validation, seed 0), the separating rungs
    if phases[args.stop_after] >= 2:
        print("# baselines at B*", flush=True)
        temperatures = [f"normalised softmax, T = {t:g}" for t in NORMALISED_TEMPERATURES]
        study.get([(name, b_star, 0) for name in temperatures])
        chosen = max(temperatures, key=lambda name: study.runs(name, b_star, (0,))[0]["val_recall@1"])
        sections["normalised_softmax_temperature"] = {
            "chosen": chosen, "val_recall@1 (seed 0)": {name: study.runs(name, b_star, (0,))[0]["val_recall@1"]
                                                        for name in temperatures}}
        study.get([(name, b_star, seed) for seed in SEEDS for name in (
            chosen, "+ second classifier (linear, on the raw embedding)", "+ L2 normalisation of its input")])
    # 3. the paper's ablations (3 seeds) and the aggregation (5 seeds)
    if phases[args.stop_after] >= 3:
        print("# ablations at B*", flush=True)
        study.get([(name, b_star, seed) for seed in SEEDS for name in (
            "published, uniform mean over the batch", "glyphs-attention, uniform mean over the batch")])
        study.get([(f"{layers} × {heads}", b_star, seed) for seed in SEEDS_ABLATION for layers in (1, 2)
                   for heads in (1, 2, 8)] + [(f"{layers} layer(s), messages off", b_star, seed)
                                              for seed in SEEDS_ABLATION for layers in (1, 2)])
    sections.update(at_converged_budget(study, b_star, sections))
    minutes = (time.perf_counter() - start) / 60
    sections["header"] = {
        "commit": _commit(), "machine": f"{_cpu_model()}, {study.threads} thread(s) per run, {args.parallel} run(s) "
        f"at a time, torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
        "minutes_this_invocation": round(minutes, 1), "quick": args.quick, "seeds": list(SEEDS),
        "seeds_curve": list(SEEDS_CURVE), "budgets": budgets, "steps_per_budget_1": base.steps,
        "phases": args.stop_after, "episodes": 3 if args.quick else EPISODES,
        "rule_beyond_noise": "|mean paired Δ| > 2 · noise band / sqrt(n)",
        "rule_converged": converged["rule"],
        "script_commit": _commit(REPO_ROOT), "test_time_grids": test_time_grids(),
    }
    output_json.parent.mkdir(parents=True, exist_ok=True)
    ordered = {"header": sections.pop("header"), **sections}
    output_json.write_text(json.dumps(ordered, indent=1))
    print(write_report(args.output.with_suffix(".md"), ordered))
    study.pool.shutdown()
    return 0


SEEDS_ABLATION = (0, 1, 2)


def converged_budget(study: Study, budgets: list[float]) -> dict:
    """B*: the smallest budget where doubling it moves the validation R@1 of every headline variant by
    less than the validation noise band at that budget (seed-paired means over the curve's seeds)."""
    from mpn_tutorial.tools.stats import paired_difference

    steps = {budget: study.runs(HEADLINE[0], budget, SEEDS_CURVE)[0]["steps"] for budget in budgets}
    checks = []
    for budget in budgets:
        if 2 * budget not in budgets:
            continue
        band = band_at(study, budget, "val_recall@1", SEEDS_CURVE)
        moves = {name: paired_difference(study.runs(name, 2 * budget, SEEDS_CURVE),
                                         study.runs(name, budget, SEEDS_CURVE), "val_recall@1").mean
                 for name in HEADLINE}
        checks.append({"factor": budget, "steps": steps[budget], "val_noise_band": band, "doubling_moves": moves,
                       "converged": all(abs(move) < band for move in moves.values())})
    first = next((check for check in checks if check["converged"]), None)
    return {"factor": first["factor"] if first else None, "steps": first["steps"] if first else None,
            "checks": checks,
            "rule": "the smallest budget where doubling it moves the validation R@1 of every headline variant (mean "
                    "of the seed-paired differences over seeds " + ", ".join(map(str, SEEDS_CURVE)) + ") by less "
                    "than the validation noise band at that budget" + ("" if first else
                                                                       "; no budget of the curve met it")}


def curve(study: Study, budgets, names) -> dict:
    """``{steps: {variant: [per-seed dicts]}}`` with the keys the package's readers use."""
    keys = ("seed", "steps", "best_epoch", "val_recall@1", "test_recall@1", "test_map@r", "train_seconds",
            "val_recall1_per_epoch")
    found = {}
    for budget in budgets:
        runs = {name: [{key: run.get(key) for key in keys} for run in study.runs(name, budget, SEEDS)]
                for name in names}
        runs = {name: value for name, value in runs.items() if value}
        found[str(runs[HEADLINE[0]][0]["steps"])] = runs
    return found


def at_converged_budget(study: Study, b_star: float, sections: dict) -> dict:
    """Every section at B*: per variant its per-seed runs, and the families of comparisons."""
    def runs(name, seeds=SEEDS):
        found = study.runs(name, b_star, seeds)
        return [{key: value for key, value in run.items() if key not in ("test_time", "val_recall1_per_epoch")}
                for run in found]

    band = {key: band_at(study, b_star, key, SEEDS) for key in ("test_recall@1", "test_map@r", "val_recall@1")}
    found: dict = {"noise_band": {"band": band, "groups": [list(group) for group in NOISE_GROUPS],
                                  "runs": {name: runs(name) for group in NOISE_GROUPS for name in group},
                                  "comparisons": family(study, b_star, {second: first for first, second in
                                                                        NOISE_GROUPS}, band)}}
    on_off = {"published": "published, messages off", "glyphs-attention": "glyphs-attention, messages off"}
    found["on_off"] = {"runs": {name: runs(name) for name in (*on_off, *on_off.values())},
                       "comparisons": family(study, b_star, on_off, band)}
    rungs = ["cross-entropy alone", "+ second classifier (linear, on the raw embedding)",
             "+ L2 normalisation of its input", "+ BNNeck classifier on the normalised embedding", "+ input map",
             "published, messages off", "published"]
    rungs = [name for name in rungs if runs(name)]
    found["decomposition"] = {"rungs": rungs, "runs": {name: runs(name) for name in rungs},
                              "comparisons": family(study, b_star, dict(zip(rungs[1:], rungs[:-1])), band)}
    chosen = sections.get("normalised_softmax_temperature", {}).get("chosen")
    if chosen and runs(chosen):
        controls = {chosen: "cross-entropy alone", "+ BNNeck classifier on the normalised embedding": chosen,
                    "published": chosen}
        found["normalised_softmax"] = {"chosen": chosen, "temperatures": sections.pop("normalised_softmax_temperature"),
                                       "runs": {name: runs(name) for name in (chosen, *controls.values(),
                                                                              *controls)},
                                       "comparisons": family(study, b_star, controls, band)}
    controls = {"oracle attention (labels, self included)": "glyphs-attention, messages off",
                "oracle attention (labels, without self)": "glyphs-attention, messages off",
                "zero W_o, messages from step 1": "glyphs-attention, messages off"}
    controls = {name: control for name, control in controls.items() if runs(name)}
    found["oracle"] = {"runs": {name: runs(name) for name in (*controls, "glyphs-attention, messages off")},
                       "comparisons": family(study, b_star, controls, band)}
    found["zero_init_out"] = {"runs": {name: runs(name) for name in ("zero W_o, messages from step 1",
                                                                    "glyphs-attention")},
                              "comparisons": family(study, b_star, {"zero W_o, messages from step 1":
                                                                    "glyphs-attention"}, band)}
    aggregation = {"published": "published, messages off",
                   "published, uniform mean over the batch": "published, messages off",
                   "glyphs-attention": "glyphs-attention, messages off",
                   "glyphs-attention, uniform mean over the batch": "glyphs-attention, messages off"}
    if runs("published, uniform mean over the batch"):
        found["aggregation"] = {"runs": {name: runs(name) for name in dict.fromkeys([*aggregation.values(),
                                                                                    *aggregation])},
                                "comparisons": family(study, b_star, aggregation, band)}
    ablation = {f"{layers} × {heads}": f"{layers} layer(s), messages off" for layers in (1, 2) for heads in (1, 2, 8)}
    if runs("2 × 8", SEEDS_ABLATION):
        found["ablation_heads_layers"] = {
            "runs": {name: runs(name, SEEDS_ABLATION) for name in dict.fromkeys([*ablation.values(), *ablation])},
            "comparisons": family(study, b_star, ablation, band, SEEDS_ABLATION)}
    learned = ("published", "glyphs-attention", "zero W_o, messages from step 1")
    found["attention"] = {name: runs(name) for name in learned}
    found["episodes_tuned"] = test_time_section(study, b_star, band)
    return found


def test_time_section(study: Study, b_star: float, band: dict[str, float]) -> dict:
    """Per model: the test-time views, each against the backbone (the primary control), Holm over the
    family; a difference counts next to the training noise band of its metric (the same rule)."""
    from mpn_tutorial.tools.stats import compare

    found = {}
    for model in TEST_TIME_MODELS:
        runs = [run for run in study.runs(model, b_star) if "test_time" in run]
        if not runs:
            continue
        for part in ("episodes", "neighbourhoods"):
            views = {view: [{"seed": run["seed"], **run["test_time"][part][view]} for run in runs]
                     for view in runs[0]["test_time"][part]}
            comparisons = compare(views, {view: "backbone" for view in views if view != "backbone"}, band)  # stats
            found.setdefault(model, {})[part] = {"runs": views, "comparisons": comparisons}
        found[model]["chosen_on_validation"] = [run["test_time"]["chosen_on_validation"] | {
            "neighbourhoods": run["test_time"]["neighbourhoods_chosen_on_validation"], "seed": run["seed"]}
            for run in runs]
    return found


def test_time_grids() -> dict[str, list[float]]:
    """The values each test-time parameter was chosen from (on the validation classes)."""
    return {"alpha": list(QE_ALPHA), "mpn_alpha": list(QE_ALPHA), "sharpness": list(TWIN_SHARPNESS),
            "k": list(QE_K), "neighbourhood alpha": list(NEIGHBOURHOOD_ALPHA)}


def picks_at_an_edge(chosen: list[dict], grids: dict[str, list[float]], messages: bool = True) -> list[str]:
    """The test-time picks (one dict per seed, as in ``chosen_on_validation``) that sit at an edge of their
    grid, where the optimum may lie outside it: the top of every grid, and the bottom where it is not
    closed by a measured value. Closed bottoms: alpha = 0 (no weighting), and the neighbourhoods' alpha-QE,
    whose alpha = 0 is the average-QE row. Without messages (``messages=False``) the MPN's refinement does
    not look at the neighbourhood, so its k is no choice."""
    def at_edge(value, grid, bottom_closed=False):
        return value == max(grid) or (value == min(grid) and min(grid) != 0 and not bottom_closed)

    found = []
    for pick in chosen:
        found += [f"{name} = {pick[name]:g} (seed {pick['seed']})" for name in ("alpha", "mpn_alpha", "sharpness")
                  if name in pick and at_edge(pick[name], grids[name])]
        for view, values in pick.get("neighbourhoods", {}).items():
            if at_edge(values["k"], grids["k"]) and (messages or view != "MPN refinement"):
                found.append(f"{view} k = {values['k']} (seed {pick['seed']})")
            if view == "alpha-QE" and at_edge(values["alpha"], grids["neighbourhood alpha"], bottom_closed=True):
                found.append(f"{view} alpha = {values['alpha']:g} (seed {pick['seed']})")
    return found


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


def table(section: dict, names=None, keys=("val_recall@1", "test_recall@1", "test_map@r"), control=None) -> str:
    """A section of the study (``{"runs": ..., "comparisons": ...}``) as ``stats.table``."""
    from mpn_tutorial.tools.stats import table as seed_table

    return seed_table(section["runs"], section.get("comparisons"), keys, names, control)


def _cell(runs, key):
    from mpn_tutorial.tools.stats import cell

    return cell(runs, key)


def _provenance(header: dict) -> str:
    """Which commit trained the runs (the library's) and, where it differs, which script measured them."""
    trained = f"library at commit {header['commit'][:10]}"
    script = header.get("script_commit", header["commit"])
    return trained if script == header["commit"] else f"{trained} (training), measured by the script at {script[:10]}"


def write_report(path: Path, study: dict) -> str:
    header, converged = study["header"], study["converged_budget"]
    lines = ["# The messages study (glyphs), at the converged budget", "",
             f"Written by `bench/messages_study.py` on {header['date']}, {_provenance(header)}: "
             f"{header['machine']}; {header['minutes_this_invocation']} min in this invocation (runs already in the "
             "store are loaded). Best epoch by validation R@1; test classes measured only. Mean ± standard deviation "
             "over seeds. Δ: seed-paired difference to the control (mean ± std of the per-seed differences), its t, "
             "and its p corrected for the comparisons of its table (Holm). * marks Holm p < 0.05 with a difference "
             f"beyond the noise band ({header['rule_beyond_noise']}).", "", "## Budget curve", "",
             f"Multiples of the preset's {header['steps_per_budget_1']} steps (schedule and warm-up in proportion), "
             f"seeds {', '.join(map(str, header['seeds_curve']))}; validation R@1 (test R@1).", "",
             "![the budget curve](messages_study_budget.png)", ""]
    names = list(next(iter(study["budget_curve"].values())))
    lines.append("| steps | " + " | ".join(names) + " |")
    lines.append("|" + "---|" * (len(names) + 1))
    for steps, runs in study["budget_curve"].items():
        lines.append(f"| {steps} | " + " | ".join(
            f"{_cell(runs[name], 'val_recall@1')} ({_cell(runs[name], 'test_recall@1')})" if name in runs else "—"
            for name in names) + " |")
    lines += ["", f"**B\\*** = {converged['steps']} steps: {converged['rule']}.", ""]
    for check in converged["checks"]:
        moves = ", ".join(f"{name} {100 * move:+.2f}" for name, move in check["doubling_moves"].items())
        lines.append(f"- {check['steps']} → {2 * check['steps']} steps: validation noise band "
                     f"±{100 * check['val_noise_band']:.2f}; doubling moves (points) {moves}: "
                     f"{'converged' if check['converged'] else 'not converged'}")
    if "noise_band" not in study:
        return "\n".join(lines)
    band = study["noise_band"]["band"]
    lines += ["", f"## At B\\* ({converged['steps']} steps)", "",
              f"**Noise band** at B\\*: ±{100 * band['test_recall@1']:.2f} points of test R@1, "
              f"±{100 * band['test_map@r']:.2f} of test MAP@R, ±{100 * band['val_recall@1']:.2f} of validation R@1 "
              "(root mean square of the seed-paired differences between the messages-off configurations that compute "
              "the same function).", ""]
    for key, title in (("noise_band", "Noise band: same function, other random draws"),
                       ("on_off", "Messages on against off"), ("decomposition", "Decomposition of the head"),
                       ("normalised_softmax", "The normalised softmax (cosine classifier), the field's baseline"),
                       ("oracle", "Attention given by the labels (a control, one fixed pattern)"),
                       ("zero_init_out", "W_o = 0 instead of the warm-up"),
                       ("aggregation", "Learned attention, the plain batch mean, no messages"),
                       ("ablation_heads_layers", "Heads × layers (published settings), each with its messages-off "
                                                 "control")):
        if key in study:
            lines += [f"### {title}", "", table(study[key]), ""]
    if study.get("attention"):
        lines += ["### What the learned attention finds", "",
                  table({"runs": study["attention"]}, keys=("test_share", "test_similarity_share", "test_self_weight",
                                                            "test_score_spread")), ""]
    for model, parts in study.get("episodes_tuned", {}).items():
        for part in ("episodes", "neighbourhoods"):
            lines += [f"### Test time, {model}: {part} (parameters chosen on validation classes; control: backbone)",
                      "", table({"runs": parts[part]["runs"], "comparisons": {
                          view: {key: {**value, "control": "backbone"} for key, value in comparison.items()}
                          for view, comparison in parts[part]["comparisons"].items()}},
                          keys=("test_recall@1", "test_map@r")), ""]
        grids = header.get("test_time_grids")
        if grids:
            edges = picks_at_an_edge(parts["chosen_on_validation"], grids, "messages off" not in model)
            lines += [f"Grids searched on the validation classes: {_grids_text(grids)} (alpha-QE's alpha = 0 is the "
                      f"average-QE row). Picks at an open edge of a grid: {'; '.join(edges) if edges else 'none'}.", ""]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    _budget_figure(study, path.with_name(path.stem + "_budget.png"))
    return text


def _grids_text(grids: dict[str, list[float]]) -> str:
    return "; ".join(f"{name} {'/'.join(f'{value:g}' for value in values)}" for name, values in grids.items())


README_BEGIN = "<!-- study:begin"
README_END = "<!-- study:end -->"


def readme_block(study: dict) -> str:
    """The README's "What the glyphs show", every number computed from the study's JSON."""
    from mpn_tutorial.tools.stats import collapsed_runs, compare, describe

    header, converged, curve = study["header"], study["converged_budget"], study["budget_curve"]
    b_star, first = converged["steps"], str(header["steps_per_budget_1"])
    band = study["noise_band"]["band"]
    names = [name for name in curve[first] if "unused" not in name]
    lines = [
        f"From the messages study (`bench/messages_study.py`, tables in `bench/messages_study.md`; notebook 06 "
        f"reads the same JSON), {header['date']}, {_provenance(header)}, {header['machine']}. Every run "
        "chooses its epoch on the validation classes; test classes are only measured.", "",
        f"**Training to convergence.** Validation R@1 (test R@1), mean ± std over seeds "
        f"{', '.join(map(str, header['seeds_curve']))}, at multiples of the presets' {first} steps (schedule and "
        f"warm-up moved in proportion). B\\* = **{b_star} steps**: {converged['rule']}.", "",
        "| steps | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    for steps, runs in curve.items():
        lines.append(f"| {steps} | " + " | ".join(
            f"{_cell(runs[name], 'val_recall@1')} ({_cell(runs[name], 'test_recall@1')})"
            if name in runs else "—" for name in names) + " |")
    lines += ["", "![The budget curve: validation R@1 per budget, and messages on − off per budget]"
              "(bench/messages_study_budget.png)", ""]
    # where a variant is compared in several sections, the later section's control is the one shown
    sections = ("normalised_softmax", "zero_init_out", "aggregation", "oracle", "decomposition", "on_off")
    runs = {name: found for section in sections if section in study for name, found in study[section]["runs"].items()}
    comparisons = {name: found for section in sections if section in study
                   for name, found in study[section]["comparisons"].items()}
    chosen = study.get("normalised_softmax", {}).get("chosen")
    rows = ["cross-entropy alone", chosen, "+ second classifier (linear, on the raw embedding)",
            "+ L2 normalisation of its input", "+ BNNeck classifier on the normalised embedding", "+ input map",
            "published, messages off", "published", "published, uniform mean over the batch",
            "glyphs-attention, messages off", "glyphs-attention", "glyphs-attention, uniform mean over the batch",
            "oracle attention (labels, self included)", "oracle attention (labels, without self)",
            "zero W_o, messages from step 1"]
    rows = [row for row in rows if row in runs]
    lines += [f"**At B\\*, {len(header['seeds'])} seeds.** Δ: the seed-paired difference to the row's control "
              f"(mean ± std of the per-seed differences), its t and its p corrected for the comparisons of its "
              f"family (Holm); * marks Holm p < 0.05 with |Δ| beyond the noise band ({header['rule_beyond_noise']}; "
              f"the band, from messages-off pairs that compute the same function: ±{100 * band['test_recall@1']:.2f} "
              f"points of test R@1 per seed).", "",
              table({"runs": runs, "comparisons": comparisons}, rows,
                    keys=("test_recall@1", "test_map@r", "test_share")), ""]

    def gap(at: str, on: str, off: str) -> str:
        by_seed = {run["seed"]: run["test_recall@1"] for run in curve[at][off]}
        values = [100 * (run["test_recall@1"] - by_seed[run["seed"]]) for run in curve[at][on]
                  if run["seed"] in by_seed]
        return f"{statistics.fmean(values):+.1f} ± {statistics.stdev(values):.1f} points"

    gains = [statistics.fmean(run["test_recall@1"] for run in curve[str(b_star)][name]) -
             statistics.fmean(run["test_recall@1"] for run in curve[first][name]) for name in names]
    early = [run for name in names for run in curve[first][name]]
    last = sum(run["best_epoch"] == len(run["val_recall1_per_epoch"]) for run in early)
    findings = [
        f"* **Budget.** From {first} steps to B\\* every headline configuration gains {100 * min(gains):.1f} to "
        f"{100 * max(gains):.1f} points of test R@1 (means over seeds); at {first} steps {last} of {len(early)} runs "
        "had their best validation R@1 in their last epoch. Numbers at the notebooks' budget say how fast a "
        "configuration learns, not where it ends.",
        f"* **The head.** Cross-entropy alone against the MPN head's second classifier (BNNeck), seed-paired: "
        f"{gap(first, 'cross-entropy alone', '+ BNNeck classifier on the normalised embedding')} at {first} steps, "
        f"{gap(str(b_star), 'cross-entropy alone', '+ BNNeck classifier on the normalised embedding')} at B\\*."]
    decomposition = study.get("decomposition")
    if decomposition and {"published", "cross-entropy alone"} <= set(decomposition["runs"]):
        whole = compare(decomposition["runs"], {"published": "cross-entropy alone"}, band)["published"]
        findings.append(f"* **The whole head at once.** Published against cross-entropy alone, at B\\*: R@1 "
                        f"{describe(whole)}, MAP@R {describe(whole, 'test_map@r')} "
                        "(every rung of the decomposition together).")
    for name in ("published", "glyphs-attention"):
        if name in comparisons:
            findings.append(f"* **The messages, {name}.** On − off: {gap(first, name, name + ', messages off')} at "
                            f"{first} steps; at B\\* {describe(comparisons[name])}.")
    for name in ("oracle attention (labels, self included)", "glyphs-attention, uniform mean over the batch",
                 "published, uniform mean over the batch", "zero W_o, messages from step 1"):
        if name in comparisons:
            control = comparisons[name]["test_recall@1"]["control"]
            findings.append(f"* {name} against {control}, at B\\*: {describe(comparisons[name])}.")
    normalised = study.get("normalised_softmax")
    if normalised:
        findings.append(f"* **The normalised softmax** ({normalised['chosen']}, the temperature chosen on validation "
                        "classes), at B\\*: " + "; ".join(
                            f"{name} against {found['test_recall@1']['control']}: R@1 {describe(found)}, MAP@R "
                            f"{describe(found, 'test_map@r')}"
                            for name, found in normalised["comparisons"].items()) + ".")
    ablation = study.get("ablation_heads_layers")
    if ablation:
        findings.append("* **Heads × layers** at B\\* (published settings, 3 seeds, each against messages off with the "
                        "same layers): " + "; ".join(f"{name} {describe(comparison)}" for name, comparison in
                                               ablation["comparisons"].items()) + ".")
        # a mean over 3 seeds hides a seed that failed: name the runs that fell far below their control
        failed = collapsed_runs(ablation)
        if failed:
            findings.append("  Runs more than 5 points below the lowest messages-off run: " + ", ".join(
                f"{name} seed {seed} ({100 * value:.1f})" for name, seed, value in failed) + ".")
    episodes = study.get("episodes_tuned", {}).get("glyphs-attention")
    if episodes:
        views = episodes["episodes"]["comparisons"]
        findings.append("* **Test time, glyphs-attention at B\\*, within held-out episodes** (8 test classes × 6; "
                        "against the backbone, every free parameter chosen on validation classes): MAP@R " + "; ".join(
                            f"{view} {describe(comparison, 'test_map@r')}" for view, comparison in views.items()) + ".")
    lines += findings
    return "\n".join(lines)


def write_readme(study: dict, readme: Path = REPO_ROOT / "README.md") -> None:
    """Replace the README's study block (between its markers) with :func:`readme_block`."""
    text = readme.read_text()
    start, end = text.index(README_BEGIN), text.index(README_END)
    start = text.index("\n", start) + 1
    readme.write_text(text[:start] + readme_block(study) + "\n" + text[end:])


def _budget_figure(study: dict, path: Path) -> None:
    """The budget curve as a PNG beside the report (the README shows it)."""
    import matplotlib

    matplotlib.use("Agg")
    from mpn_tutorial.viz import plot_budget_curve

    plot_budget_curve(study).savefig(path, dpi=90, bbox_inches="tight")


def _commit(where: Path | None = None) -> str:
    """The commit of the library this process imports (or of the folder ``where``)."""
    import mpn_tutorial

    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=where or Path(mpn_tutorial.__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("Model name:")),
                "unknown CPU")


if __name__ == "__main__":
    sys.exit(main())
