"""The attention study: why the batch attention stays uniform on the glyphs, and what makes it learn.

With the published settings (``--preset glyphs``), the MPN's attention on the glyphs never leaves
uniform. This script trains a ladder of variants, each with its **messages-off control** (the same
configuration with ``mpn_attention="none"``: same head, no sample receives anything from the
others) over several seeds, and measures on the **test classes**: backbone Recall@1 and MAP@R, the
same-class share of the attention on held-out P×K batches (chance = (K-1)/(N-1) = 0.106 for 8×6),
and optional test-time refinement (``evaluate(..., refine_k=10)``).

The settings of the ``glyphs-attention`` preset (input scale, warm-up length) are chosen first, on
the **validation classes** only (selection phase, printed with its rule); test numbers never
choose anything.

Runs are stored under ``data/study_runs`` (the notebooks' run store), so an interrupted study
resumes where it stopped; delete the folder to retrain everything. Writes the tables to
``bench/attention_study.md`` and the per-seed numbers to ``bench/attention_study.json``.

    nice -n 19 python bench/attention_study.py            # about an hour on 2 cores from scratch
    python bench/attention_study.py --quick --output /tmp/study   # tiny networks: ~20 s, checks the machinery
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

from benchlib import REPO_ROOT, print_header

from mpn_tutorial.config import TrainConfig
from mpn_tutorial.data.build import build_datasets
from mpn_tutorial.evaluation import attention_share, evaluate
from mpn_tutorial.presets import GLYPHS, GLYPHS_ATTENTION, get_preset
from mpn_tutorial.tools.run_store import cache_key, train_cached
from mpn_tutorial.tools.runtime import thread_count
from mpn_tutorial.tools.stats import summary

CHANCE = (GLYPHS.samples_per_class - 1) / (GLYPHS.classes_per_batch * GLYPHS.samples_per_class - 1)
SHARE_TARGET, RECALL_MARGIN = 0.35, 0.02  # the acceptance criteria of the attention preset
MEASUREMENT_VERSION = 1

# The ladder: the glyph preset, then the attention preset with each of its three changes removed in
# turn, then the preset itself (messages on); every rung is also run with messages off. ``None`` marks
# a setting taken from the selection phase (input scale, warm-up).
VARIANTS: dict[str, dict] = {
    "published (glyphs preset)": {},
    "input scaled only": dict(mpn_input_scale=None),
    "scaled, warm-up (no identity values)": dict(mpn_input_scale=None, message_warmup_epochs=None),
    "scaled, identity values (no warm-up)": dict(mpn_input_scale=None, mpn_identity_values=True),
    "identity values, warm-up (input × 1)": dict(mpn_identity_values=True, message_warmup_epochs=None),
    "glyphs-attention (× scale, identity values, warm-up)": "glyphs-attention",
    "glyphs-attention + similarity prior": dict(preset="glyphs-attention", mpn_similarity_prior=True),
}
ATTENTION = "glyphs-attention (× scale, identity values, warm-up)"
# Further ablations of the attention preset (messages on), and the published settings with 8 heads.
ABLATIONS: dict[str, dict] = {
    "glyphs-attention, 1 head": dict(mpn_heads=1),
    "glyphs-attention, 4 heads": dict(mpn_heads=4),
    "glyphs-attention, 8 heads": dict(mpn_heads=8),
    "glyphs-attention, 2 layers": dict(mpn_layers=2),
    "glyphs-attention, zero-logit softmax": dict(zero_logit=True),
    "published, 8 heads": dict(preset="glyphs", mpn_heads=8),
}


def variant_config(changes, base: TrainConfig, selected: dict) -> TrainConfig:
    """The configuration of a rung: the glyph preset (or the attention preset) with its changes."""
    if changes == "glyphs-attention":
        return base.replace(**_attention_settings(selected))
    changes = dict(changes)
    preset = changes.pop("preset", None)
    config = base.replace(**_attention_settings(selected)) if preset == "glyphs-attention" else base
    for name in ("mpn_input_scale", "message_warmup_epochs"):
        if name in changes and changes[name] is None:
            changes[name] = selected[name]
    return config.replace(**changes)


def _attention_settings(selected: dict) -> dict:
    return dict(preset="glyphs-attention", mpn_input_scale=selected["mpn_input_scale"], mpn_identity_values=True,
                message_warmup_epochs=selected["message_warmup_epochs"])


class Study:
    """Trains (or loads) runs and measures them; measurements are cached next to the stored runs."""

    def __init__(self, base: TrainConfig, store: Path, share_batches: int, refine_k: int) -> None:
        self.base, self.store = base, store
        self.share_batches, self.refine_k = share_batches, refine_k
        self.datasets = build_datasets(base)
        self.runs = 0

    def measure(self, config: TrainConfig, refine: bool = False) -> dict:
        path = self.store / f"{cache_key(config)}.measured-v{MEASUREMENT_VERSION}-k{self.refine_k}.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if not refine or "refined_recall@1" in stored:
                return stored
        result = train_cached(config, self.store, datasets=self.datasets, progress=False)
        self.runs += 1
        model, test = result.model, self.datasets.test
        measured = {
            "val_recall@1": result.val_metrics["recall@1"],
            "best_epoch": result.best_epoch,
            "test_recall@1": result.test_metrics["recall@1"],
            "test_map@r": result.test_metrics["map@r"],
            "train_seconds": result.seconds,
        }
        if model.has_attention:
            measured["val_share"] = attention_share(model, self.datasets.val, self.share_batches)
            measured["test_share"] = attention_share(model, test, self.share_batches)
        if refine and model.has_attention:
            refined = evaluate(model, test, ks=(1,), refine_k=self.refine_k, batch_size=config.eval_batch_size)
            measured.update({"refined_recall@1": refined["recall@1"], "refined_map@r": refined["map@r"]})
        path.write_text(json.dumps(measured))
        print(f"  {config.preset:18s} seed {config.seed} messages {'off' if config.mpn_attention == 'none' else 'on '}"
              f" val R@1 {100 * measured['val_recall@1']:5.1f}  test R@1 {100 * measured['test_recall@1']:5.1f}"
              f"  share {measured.get('test_share', float('nan')):.3f}", flush=True)
        return measured

    def over_seeds(self, config: TrainConfig, seeds, refine: bool = False) -> list[dict]:
        return [{"seed": seed, **self.measure(config.replace(seed=seed), refine)} for seed in seeds]


def cell(runs: list[dict], key: str, percent: bool = True) -> str:
    found = summary(runs, key)
    if found is None:
        return "—"
    mean, std, _ = found
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if percent else f"{mean:.3f} ± {std:.3f}"


def select_attention_settings(study: Study, seeds, scale_multiples, warmups) -> tuple[dict, list[str], dict]:
    """Choose input scale and warm-up of the attention preset on the validation classes.

    Rule: the highest mean validation share among candidates whose mean validation R@1 is at most
    one point below the published preset's (mean over the same seeds).
    """
    published = study.over_seeds(study.base, seeds)
    reference = statistics.fmean(run["val_recall@1"] for run in published)
    lines = ["| input scale | warm-up epochs | val R@1 (%) | val share | eligible |", "|---|---|---|---|---|",
             f"| published preset (1) | — | {cell(published, 'val_recall@1')} | "
             f"{cell(published, 'val_share', False)} | — |"]
    candidates, raw = [], {"published": published}
    root = math.sqrt(study.base.embedding_dim)
    for multiple in scale_multiples:
        for warmup in warmups:
            scale = multiple * root
            settings = {"mpn_input_scale": scale, "message_warmup_epochs": warmup}
            runs = study.over_seeds(study.base.replace(**_attention_settings(settings)), seeds)
            val_recall = statistics.fmean(run["val_recall@1"] for run in runs)
            val_share = statistics.fmean(run["val_share"] for run in runs)
            eligible = val_recall >= reference - 0.01
            candidates.append((eligible, val_share, settings))
            raw[f"scale {scale:.4g}, warm-up {warmup}"] = runs
            lines.append(f"| {multiple:g} √D = {scale:.4g} | {warmup} | {cell(runs, 'val_recall@1')} | "
                         f"{cell(runs, 'val_share', False)} | {'yes' if eligible else 'no'} |")
    eligible = [c for c in candidates if c[0]] or candidates
    chosen = max(eligible, key=lambda c: c[1])[2]
    return chosen, lines, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny networks, one seed, few variants (~20 s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "attention_study",
                        help="writes OUTPUT.md and OUTPUT.json (default: bench/attention_study)")
    parser.add_argument("--store", type=Path, default=REPO_ROOT / "data" / "study_runs")
    parser.add_argument("--skip-long", action="store_true", help="skip the twice-as-long budget")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    base = get_preset("glyphs", data_root=str(REPO_ROOT / "data"))
    seeds, scale_multiples, warmups, variants = args.seeds, (1, 2, 4), (3, 5), VARIANTS
    share_batches, refine_k = 10, 10
    if args.quick:
        base = base.replace(glyph_channels=(8, 16), embedding_dim=16, mpn_ff_dim=32, epochs=3, batches_per_epoch=4,
                            lr_decay_epochs=(2,))
        seeds, scale_multiples, warmups, share_batches, refine_k = args.seeds[:1], (1,), (1,), 2, 3
        variants = {name: VARIANTS[name] for name in ("published (glyphs preset)", ATTENTION)}
        args.skip_long = True
    print_header("attention study (glyphs)", {"seeds": seeds, "store": args.store, "threads": thread_count()})
    study = Study(base, args.store, share_batches, refine_k)

    print("# selection on the validation classes", flush=True)
    selected, selection_lines, raw_selection = select_attention_settings(study, seeds, scale_multiples, warmups)
    preset_matches = (math.isclose(selected["mpn_input_scale"], GLYPHS_ATTENTION.mpn_input_scale)
                      and selected["message_warmup_epochs"] == GLYPHS_ATTENTION.message_warmup_epochs)

    print("# the ladder on the test classes, each rung with its messages-off control", flush=True)
    results: dict[str, dict[str, list[dict]]] = {}
    for name, changes in variants.items():
        config = variant_config(changes, base, selected)
        results[name] = {"on": study.over_seeds(config, seeds, refine=True),
                         "off": study.over_seeds(config.without_messages(), seeds)}
    cross_entropy = study.over_seeds(base.replace(loss="ce"), seeds)

    ablations = {}
    if not args.quick:
        print("# further ablations", flush=True)
        attention_config = variant_config("glyphs-attention", base, selected)
        ablations["glyphs-attention (2 heads, 1 layer)"] = results[ATTENTION]["on"]
        for name, changes in ABLATIONS.items():
            changes = dict(changes)
            config = base if changes.pop("preset", None) == "glyphs" else attention_config
            ablations[name] = study.over_seeds(config.replace(**changes), seeds)

    long_results = {}
    if not args.skip_long:
        print("# twice the budget", flush=True)
        for name in ("published (glyphs preset)", ATTENTION):
            config = variant_config(variants[name], base, selected)
            config = config.replace(epochs=2 * config.epochs, message_warmup_epochs=2 * config.message_warmup_epochs,
                                    lr_decay_epochs=tuple(2 * e for e in config.lr_decay_epochs))
            long_results[name] = {"on": study.over_seeds(config, seeds),
                                  "off": study.over_seeds(config.without_messages(), seeds)}

    minutes = (time.perf_counter() - start) / 60
    report = write_report(args.output, base, seeds, selected, selection_lines, preset_matches, results, cross_entropy,
                          ablations, long_results, minutes, study.runs, share_batches, refine_k)
    args.output.with_suffix(".json").write_text(json.dumps({
        "seeds": seeds, "selected": selected, "selection": raw_selection, "results": results,
        "cross_entropy": cross_entropy, "ablations": ablations, "twice_the_budget": long_results, "minutes": minutes,
    }, indent=1))
    print(report)
    return 0


def paired_difference(on: list[dict], off: list[dict], key: str) -> str:
    from mpn_tutorial.tools.stats import paired_difference as seed_paired

    found = seed_paired(on, off, key)
    return f"{100 * found.mean:+.1f} ± {100 * found.std:.1f}"


def write_report(output: Path, base, seeds, selected, selection_lines, preset_matches, results, cross_entropy,
                 ablations, long_results, minutes, trained, share_batches, refine_k) -> str:
    from benchlib import cpu_model

    published = results["published (glyphs preset)"]["on"]
    attention = results.get(ATTENTION, {}).get("on", [])
    lines = [
        "# The attention study (glyphs)",
        "",
        f"Written by `bench/attention_study.py` on {time.strftime('%Y-%m-%d')}: {cpu_model()}, {thread_count()} "
        f"threads; {minutes:.1f} min for this invocation ({trained} runs trained or measured now, the rest from the "
        f"run store). Seeds {', '.join(map(str, seeds))}; every run {base.epochs} epochs × {base.batches_per_epoch} "
        f"batches of {base.classes_per_batch}×{base.samples_per_class} glyphs, best epoch chosen by validation R@1. "
        f"Mean ± standard deviation over seeds. *Share*: the same-class share of the attention to other samples on "
        f"{share_batches} held-out P×K batches (chance {CHANCE:.3f}). *Refined*: test-time refinement over "
        f"k-reciprocal neighbourhoods, k = {refine_k}.",
        "",
        "## 1. Selection of the attention preset's settings (validation classes only)",
        "",
        "Rule: the highest mean validation share among the candidates whose mean validation R@1 is at most one "
        "point below the published preset's.",
        "",
        *selection_lines,
        "",
        f"Chosen: input scale {selected['mpn_input_scale']:.4g} "
        f"({selected['mpn_input_scale'] / math.sqrt(base.embedding_dim):g} √D), "
        f"warm-up {selected['message_warmup_epochs']} epochs. `presets.GLYPHS_ATTENTION` "
        + ("uses exactly these." if preset_matches else "**differs from this choice: update presets.py.**"),
        "",
        "## 2. The ladder (test classes), each rung with its messages-off control",
        "",
        "| variant | messages | test R@1 (%) | test MAP@R (%) | test share | refined R@1 (%) | refined MAP@R (%) "
        "| on − off R@1 (points) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        for which in ("on", "off"):
            difference = paired_difference(runs["on"], runs["off"], "test_recall@1") if which == "on" else ""
            lines.append(f"| {name} | {which} | {cell(runs[which], 'test_recall@1')} | "
                         f"{cell(runs[which], 'test_map@r')} | {cell(runs[which], 'test_share', False)} | "
                         f"{cell(runs[which], 'refined_recall@1')} | {cell(runs[which], 'refined_map@r')} | "
                         f"{difference} |")
    lines.append(f"| cross-entropy only | — | {cell(cross_entropy, 'test_recall@1')} | "
                 f"{cell(cross_entropy, 'test_map@r')} | — | — | — | |")
    lines += ["", "*Scaled*: the MPN's input multiplied by the selected scale (section 1). On the *off* rows no "
              "message flows, so their share measures attention that is computed but never used: chance for random "
              "W_q, W_k, and for the similarity prior (W_q = W_k = I, never trained) the similarity of the trained "
              "backbone's embeddings. Rungs whose controls are the same configuration share their off row's runs."]
    if ablations:
        lines += ["", "## 3. Further ablations (messages on)", "",
                  "| variant | test R@1 (%) | test MAP@R (%) | test share |", "|---|---|---|---|"]
        lines += [f"| {name} | {cell(runs, 'test_recall@1')} | {cell(runs, 'test_map@r')} | "
                  f"{cell(runs, 'test_share', False)} |" for name, runs in ablations.items()]
    if long_results:
        lines += ["", f"## 4. Twice the budget ({2 * base.epochs} epochs; warm-up and learning-rate decay doubled)", "",
                  "| variant | messages | test R@1 (%) | test MAP@R (%) | test share | on − off R@1 (points) |",
                  "|---|---|---|---|---|---|"]
        for name, runs in long_results.items():
            for which in ("on", "off"):
                difference = paired_difference(runs["on"], runs["off"], "test_recall@1") if which == "on" else ""
                lines.append(f"| {name} | {which} | {cell(runs[which], 'test_recall@1')} | "
                             f"{cell(runs[which], 'test_map@r')} | {cell(runs[which], 'test_share', False)} | "
                             f"{difference} |")
    if attention:
        shares = [run["test_share"] for run in attention]
        gap = statistics.fmean(r["test_recall@1"] for r in attention) - statistics.fmean(
            r["test_recall@1"] for r in published)
        lines += ["", "## 5. The attention preset against its acceptance criteria", "",
                  f"- same-class share ≥ {SHARE_TARGET} in every seed: "
                  f"{'yes' if min(shares) >= SHARE_TARGET else 'no'} ({', '.join(f'{s:.3f}' for s in shares)})",
                  f"- test R@1 at most {100 * RECALL_MARGIN:.0f} points below the published preset at the same number "
                  f"of steps (3-seed means): {'yes' if gap >= -RECALL_MARGIN else 'no'} ({100 * gap:+.1f} points)"]
    text = "\n".join(lines) + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
