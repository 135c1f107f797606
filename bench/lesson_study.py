"""What the lessons need beyond the messages study, measured with its protocol at its converged budget B*.

1. **Pairs and triplets at B\\*** (``pairs_triplets``): the contrastive loss and the semi-hard triplet loss
   of the glyph preset (notebook 02), trained at the messages study's B\\* (5 seeds) and at twice B\\*
   (3 seeds), with the study's convergence rule applied to them too: B\\* counts as their converged
   budget when doubling it moves their validation R@1 (seed-paired mean) by less than the validation
   noise band the study measured at B\\*; otherwise the next doubling is trained and tested the same way.
   At their converged budget, each is compared seed by seed with the published MPN (Holm over the two,
   the study's test noise band); cross-entropy alone is the study's own runs.
2. **The paper's Figure 1 claim** (``figure1``): "after each message-passing step, the embeddings of
   images of the same class become more similar". For trained models at B\\* (5 seeds) of the published
   settings and of ``glyphs-attention``, each beside its messages-off control:
   ``evaluation.class_similarity`` on 10 fixed P×K batches of test classes: the mean cosine similarity
   of same-class and of other-class pairs before the MPN (its input, the normalised embedding), after
   its input map and after its layer, with the layer's messages and (the control within the model) with
   every message 0.

Runs are obtained as the messages study obtains them (``messages_study.Study``: the same run store,
one thread per run, two side by side), so the published MPN's runs at B\\* are the study's runs again;
the script reports whether their test R@1 reproduces the shipped study's. Writes
``mpn_tutorial/results/lesson_study.json`` (with commit, machine and minutes) and ``bench/lesson_study.md``.

    nice -n 5 python bench/lesson_study.py --parallel 2       # about 1.5 h on 2 cores from scratch
    python bench/lesson_study.py --quick --store /tmp/lesson-store --output /tmp/lesson   # the machinery, ~1 min
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import messages_study as study_script
from benchlib import REPO_ROOT

B_STAR_FACTOR = 4  # the messages study's B* (2,400 steps = 4 × the preset's 600), read back from its JSON below
SEEDS, SEEDS_DOUBLED = (0, 1, 2, 3, 4), (0, 1, 2)
BASELINES = ("contrastive", "semi-hard triplet")
FIGURE1 = ("published", "published, messages off", "glyphs-attention", "glyphs-attention, messages off")
FIGURE1_BATCHES, FIGURE1_SEED = 10, 1000  # the fixed test-class batches (evaluation.diagnostic_batches)


def configurations(base, attention) -> dict:
    return {"contrastive": base.replace(loss="contrastive"), "semi-hard triplet": base.replace(loss="triplet"),
            "published": base, "published, messages off": base.without_messages(),
            "glyphs-attention": attention, "glyphs-attention, messages off": attention.without_messages()}


def obtain(job: tuple[str, dict, str, bool]) -> dict:
    """The messages study's measurements of a run and, for a model with an MPN, its class similarity per stage
    (cached beside the run, keyed by the run and the measuring code)."""
    name, settings, store, _ = job
    if settings["loss"] != "mpn":
        return study_script.obtain(job)
    from mpn_tutorial.config import TrainConfig
    from mpn_tutorial.evaluation import class_similarity, diagnostic_batches
    from mpn_tutorial.tools.run_store import cache_key, train_cached

    config = TrainConfig.from_dict(settings)
    path = Path(store) / f"{cache_key(config)}.figure1-{study_script.measuring_code(False)}.json"
    if path.exists():
        return json.loads(path.read_text())
    measured = study_script.obtain(job)
    datasets = study_script._datasets(config)
    model = train_cached(config, store, datasets=datasets, progress=False).model  # stored by obtain just now
    batches = diagnostic_batches(datasets.test, 2 if study_script._WORKER["quick"] else FIGURE1_BATCHES,
                                 config.classes_per_batch, config.samples_per_class, seed=FIGURE1_SEED)
    measured["class_similarity"] = class_similarity(model, batches)
    path.write_text(json.dumps(measured))
    return measured


def converged(study, name: str, band: float, factor: float, limit: float) -> tuple[float, list[dict]]:
    """Double the budget from ``factor`` until doubling moves the validation R@1 by less than ``band``."""
    from mpn_tutorial.tools.stats import paired_difference

    checks = []
    while True:
        study.get([(name, budget, seed) for budget in (factor, 2 * factor) for seed in SEEDS_DOUBLED])
        move = paired_difference(study.runs(name, 2 * factor, SEEDS_DOUBLED), study.runs(name, factor, SEEDS_DOUBLED),
                                 "val_recall@1").mean
        checks.append({"factor": factor, "doubling_moves": move, "converged": abs(move) < band})
        if abs(move) < band or 2 * factor >= limit:
            return factor if abs(move) < band else 2 * factor, checks
        factor *= 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny networks, short runs, 2 seeds (~1 min)")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time (one thread each when above 1)")
    parser.add_argument("--store", type=Path, default=REPO_ROOT / "data" / "study_runs")
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / "data")
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "lesson_study")
    parser.add_argument("--limit", type=float, default=16,
                        help="the largest budget factor the convergence rule may try")
    args = parser.parse_args(argv)
    output_json = (args.output.with_suffix(".json") if args.quick
                   else REPO_ROOT / "mpn_tutorial" / "results" / "lesson_study.json")

    import torch

    from mpn_tutorial.notebook import load_study
    from mpn_tutorial.presets import GLYPHS, GLYPHS_ATTENTION
    from mpn_tutorial.tools.stats import compare

    start = time.perf_counter()
    messages = load_study("messages")
    b_star = messages["converged_budget"]["factor"]
    val_band = next(check["val_noise_band"] for check in messages["converged_budget"]["checks"]
                    if check["factor"] == b_star)
    test_band = messages["noise_band"]["band"]
    base = GLYPHS.replace(data_root=str(args.data_root))
    attention = GLYPHS_ATTENTION.replace(data_root=str(args.data_root))
    global SEEDS, SEEDS_DOUBLED
    if args.quick:
        tiny = dict(glyph_channels=(8, 16), embedding_dim=16, mpn_ff_dim=32, epochs=4, batches_per_epoch=3,
                    lr_decay_epochs=(3,))
        base = base.replace(**tiny)
        attention = attention.replace(**tiny, message_warmup_epochs=2, mpn_input_scale=2 * math.sqrt(16))
        SEEDS, SEEDS_DOUBLED, b_star, args.limit = (0, 1), (0, 1), 1, 2
    study = study_script.Study(configurations(base, attention), args.store, args.parallel, str(args.data_root),
                               args.quick, worker=obtain)
    print(f"lesson study: B* = ×{b_star:g}; {args.parallel} at a time, {study.threads} thread(s) each; store "
          f"{args.store}", flush=True)

    print("# Figure 1: trained models at B*", flush=True)
    study.get([(name, b_star, seed) for name in FIGURE1 for seed in SEEDS])
    print("# pairs and triplets: convergence", flush=True)
    budgets = {name: converged(study, name, val_band, b_star, args.limit) for name in BASELINES}
    for name, (factor, _) in budgets.items():
        study.get([(name, factor, seed) for seed in SEEDS])

    published = study.runs("published", b_star)
    runs = {"published": published, **{name: study.runs(name, budgets[name][0]) for name in BASELINES}}
    shipped = {run["seed"]: run["test_recall@1"] for run in messages["on_off"]["runs"]["published"]}
    keys = ("seed", "steps", "best_epoch", "val_recall@1", "test_recall@1", "test_map@r")
    sections = {
        "pairs_triplets": {
            "budgets": {name: {"factor": factor, "steps": study.runs(name, factor)[0]["steps"], "checks": checks}
                        for name, (factor, checks) in budgets.items()},
            "runs": {name: [{key: run[key] for key in keys} for run in found] for name, found in runs.items()},
            "comparisons": compare(runs, {name: "published" for name in BASELINES}, test_band),
            "published_reproduces_the_messages_study": {
                "test_recall@1_differences": [run["test_recall@1"] - shipped[run["seed"]] for run in published
                                              if run["seed"] in shipped]},
        },
        "figure1": {name: [{"seed": run["seed"], "test_recall@1": run["test_recall@1"],
                            "class_similarity": run["class_similarity"]} for run in study.runs(name, b_star)]
                    for name in FIGURE1},
    }
    sections["header"] = {
        "commit": study_script._commit(), "machine": f"{study_script._cpu_model()}, {study.threads} thread(s) per "
        f"run, {args.parallel} run(s) at a time, torch {torch.__version__}", "date": time.strftime("%Y-%m-%d"),
        "minutes_this_invocation": round((time.perf_counter() - start) / 60, 1), "quick": args.quick,
        "b_star_factor": b_star, "b_star_steps": published[0]["steps"], "seeds": list(SEEDS),
        "seeds_doubled": list(SEEDS_DOUBLED), "val_noise_band": val_band, "test_noise_band": test_band,
        "figure1_batches": FIGURE1_BATCHES, "rule_converged": "doubling the budget moves validation R@1 (seed-paired "
        "mean over seeds " + ", ".join(map(str, SEEDS_DOUBLED)) + ") by less than the messages study's validation "
        "noise band at B*",
    }
    ordered = {"header": sections.pop("header"), **sections}
    output_json.parent.mkdir(parents=True, exist_ok=True)
    output_json.write_text(json.dumps(ordered, indent=1))
    print(write_report(args.output.with_suffix(".md"), ordered))
    study.pool.shutdown()
    return 0


def write_report(path: Path, found: dict) -> str:
    from mpn_tutorial.tools.stats import FOOTNOTE, table

    header, pairs = found["header"], found["pairs_triplets"]
    lines = ["# The lesson study (glyphs): pairs and triplets at B*, and the paper's Figure 1", "",
             f"Written by `bench/lesson_study.py` on {header['date']}, library at commit {header['commit'][:10]}: "
             f"{header['machine']}; {header['minutes_this_invocation']} min in this invocation. B* = "
             f"{header['b_star_steps']} steps (the messages study's). Best epoch by validation R@1; test classes "
             "measured only.", "", "## Pairs and triplets against the published MPN", ""]
    for name, budget in pairs["budgets"].items():
        moves = "; ".join(f"×{check['factor']:g} → ×{2 * check['factor']:g}: {100 * check['doubling_moves']:+.2f}"
                          for check in budget["checks"])
        lines.append(f"- {name}: converged budget {budget['steps']} steps (doubling moves validation R@1 by {moves} "
                     f"points; the band is ±{100 * header['val_noise_band']:.2f}).")
    reproduced = pairs["published_reproduces_the_messages_study"]["test_recall@1_differences"]
    lines += [f"- The published MPN's runs against the messages study's shipped runs, test R@1 per seed: largest "
              f"difference {100 * max(map(abs, reproduced), default=float('nan')):.2f} points.", "",
              table(pairs["runs"], pairs["comparisons"], keys=("val_recall@1", "test_recall@1", "test_map@r")), "",
              FOOTNOTE + " Noise band (the messages study's, at B*): "
              f"±{100 * header['test_noise_band']['test_recall@1']:.2f} points of test R@1.", "",
              "## Figure 1: same-class against other-class similarity, stage by stage", "",
              "Mean over seeds of the mean cosine similarity of same-class pairs minus that of other-class pairs "
              f"(the gap), on {header['figure1_batches']} test-class 8 × 6 batches.", ""]
    stages = list(found["figure1"]["published"][0]["class_similarity"])
    lines += ["| model | " + " | ".join(stages) + " |", "|" + "---|" * (len(stages) + 1)]
    for name, runs in found["figure1"].items():
        cells = []
        for stage in stages:
            gaps = [run["class_similarity"][stage]["gap"] for run in runs]
            mean = sum(gaps) / len(gaps)
            spread = (sum((gap - mean) ** 2 for gap in gaps) / max(len(gaps) - 1, 1)) ** 0.5
            cells.append(f"{mean:.3f} ± {spread:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
