"""The messages study: does passing messages over the batch make a better embedding on the glyphs, and why (not)?

Every comparison runs on the library's experiment runner (``mpn_tutorial.experiments``, the same
code as ``python -m mpn_tutorial compare`` and notebook 06), over seeds, seed-paired, against a
control that removes exactly one thing, next to the **noise band** (the spread of paired
differences between messages-off configurations that compute the same function). It writes
``bench/messages_study.md`` (tables) and ``mpn_tutorial/results/messages_study.json`` (every
seed's numbers; ``bench/messages_study.json`` links to it, and the package ships it for notebooks
04 and 06). The JSON's keys:

- ``noise_band``: messages-off configurations that compute the same function (they differ only in
  how unused attention weights are initialised, which shifts the random draws of the rest);
- ``on_off``: the published preset and ``glyphs-attention``, messages on and off;
- ``oracle``: attention given by the labels during training (uniform over the sample's class in
  the batch, the sample itself included), with and without the warm-up, against messages off;
- ``decomposition``: cross-entropy alone; + a BNNeck classifier on the L2-normalised embedding;
  + the MPN's input map; + its feed-forward block (= the MPN head with messages off); + messages;
- ``zero_init_out``: messages on from step 1 with W_o = 0, against the warm-up switch;
- ``refinement``: test-time refinement over k-reciprocal neighbourhoods by the MPN, beside average
  and alpha-query expansion on the same neighbourhoods and the MPN without messages per sample;
- ``test_selection``: the epoch chosen on the test classes (the official release's practice)
  against the validation classes;
- ``attention``: the learned attention's same-class share beside the backbone-similarity attention
  (at the same sharpness) and the mean self-weight;
- ``episodes``: batch context at inference: within held-out P×K episodes of test classes, the MPN's
  output (messages over the episode) against its output without messages and against query
  expansion within the episode.

Settings come from the presets (chosen on validation classes, ``presets.py``); alpha = 3 and k = 10
are the usual values of query expansion, not tuned. Runs are kept in a run store (default
``data/study_runs``; its key holds the library's source), so an interrupted study resumes.

    nice -n 19 python bench/messages_study.py           # hours on 2 cores from scratch
    python bench/messages_study.py --quick --output /tmp/study --store /tmp/store   # ~1 min, the machinery
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import REPO_ROOT, cpu_model, print_header

from mpn_tutorial import metrics
from mpn_tutorial.callbacks import EpochEvaluation
from mpn_tutorial.config import TrainConfig
from mpn_tutorial.data.build import build_datasets
from mpn_tutorial.data.splits import ClassSubset
from mpn_tutorial.evaluation import _run_mpn, diagnostic_batches, embed_dataset, refine_embeddings
from mpn_tutorial.experiments import measure, noise_band, paired_table, run_comparison
from mpn_tutorial.presets import GLYPHS, GLYPHS_ATTENTION
from mpn_tutorial.run_store import cache_key, train_cached
from mpn_tutorial.runtime import thread_count

REFINE_K, ALPHA, EPISODES = 10, 3.0, 50
REFINEMENTS = {"backbone": None, "MPN refinement": "mpn", "MPN without messages": "mpn_without_messages",
               "average QE": "mean", "alpha-QE": "similarity_weighted"}


def configurations(base: TrainConfig, attention: TrainConfig) -> dict[str, dict[str, TrainConfig]]:
    """Every configuration of the study, by section (a name may appear in several sections)."""
    published_off, attention_off = base.without_messages(), attention.without_messages()
    return {
        "on_off": {"published": base, "published, messages off": published_off,
                   "glyphs-attention": attention, "glyphs-attention, messages off": attention_off},
        "noise_band": {  # two groups; within a group every configuration computes the same function
            "published, messages off": published_off,
            "published, messages off, identity W_v W_o (unused)": published_off.replace(mpn_identity_values=True),
            "glyphs-attention, messages off": attention_off,
            "glyphs-attention, messages off, random W_v W_o (unused)": attention_off.replace(mpn_identity_values=False),
        },
        "oracle": {"oracle attention, warm-up": attention.replace(mpn_attention="oracle"),
                   "oracle attention, no warm-up": attention.replace(mpn_attention="oracle", message_warmup_epochs=0),
                   "glyphs-attention, messages off": attention_off},
        "decomposition": {
            "cross-entropy alone": base.replace(loss="ce"),
            "+ BNNeck classifier on the normalised embedding": base.replace(mpn_layers=0, mpn_input_map=False),
            "+ input map": base.replace(mpn_layers=0),
            "+ feed-forward block (= MPN head, messages off)": published_off,
            "+ messages (= published MPN)": base,
        },
        "zero_init_out": {
            "glyphs-attention (warm-up switch)": attention,
            "zero W_o, messages from step 1": attention.replace(mpn_zero_out=True, message_warmup_epochs=0),
            "glyphs-attention, messages off": attention_off},
    }


NOISE_GROUPS = (("published, messages off", "published, messages off, identity W_v W_o (unused)"),
                ("glyphs-attention, messages off", "glyphs-attention, messages off, random W_v W_o (unused)"))
ON_OFF = ("published", "published, messages off", "glyphs-attention", "glyphs-attention, messages off")
REFINED = ON_OFF + ("zero W_o, messages from step 1",)
LEARNED_ATTENTION = ("published", "glyphs-attention", "zero W_o, messages from step 1")


class Study:
    """Obtains runs through the run store and measures each once (measurements cached beside the runs)."""

    def __init__(self, base: TrainConfig, store: Path, share_batches: int, episodes: int,
                 test_classes: int | None = None) -> None:
        self.store, self.share_batches, self.episodes = store, share_batches, episodes
        self.datasets = build_datasets(base)
        if test_classes is not None:  # --quick: a few test classes, so that evaluating is fast
            self.datasets.test = ClassSubset(self.datasets.test, np.arange(test_classes))
        self.trained = 0

    def _path(self, config: TrainConfig) -> Path:
        return self.store / f"{cache_key(config)}.measured.json"

    def run(self, name: str, config: TrainConfig) -> dict:
        path = self._path(config)
        if path.exists():
            return json.loads(path.read_text())
        # the test classes after every epoch only where the test-selection lesson needs them (8 evaluations a run)
        recorders = [EpochEvaluation(self.datasets.test, ks=(1,), batch_size=config.eval_batch_size)] if (
            name in ON_OFF) else []
        result = train_cached(config, self.store, callbacks=recorders, datasets=self.datasets, progress=False)
        self.trained += 1
        measured = measure(result, self.datasets.test, self.share_batches)
        for recorder in recorders:
            measured["test_recall@1_per_epoch"] = [m["recall@1"] for _, m in recorder.results]
            measured["test_map@r_per_epoch"] = [m["map@r"] for _, m in recorder.results]
        if name in REFINED:
            measured["refinement"] = self.refine(result.model)
            measured["episodes"] = self.episode_context(result.model, config)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(measured))
        print(f"  {name:58s} seed {config.seed}  test R@1 {100 * measured['test_recall@1']:5.1f}  MAP@R "
              f"{100 * measured['test_map@r']:5.1f}  share {measured.get('test_share', math.nan):.3f}"
              f"  ({measured['train_seconds']:.0f} s)", flush=True)
        return measured

    def refine(self, model) -> dict:
        embeddings, labels = embed_dataset(model, self.datasets.test)
        refined = {}
        for name, method in REFINEMENTS.items():
            shown = embeddings if method is None else refine_embeddings(model, embeddings, REFINE_K, method, ALPHA)
            found = metrics.retrieval_metrics(shown, labels, (1,))
            refined[name] = {"test_recall@1": found["recall@1"], "test_map@r": found["map@r"]}
        return refined

    @torch.no_grad()
    def episode_context(self, model, config: TrainConfig) -> dict:
        """Within-episode retrieval on held-out P×K episodes of test classes: R@1 and MAP@R of each sample
        against the rest of its episode, for the backbone embedding and three ways to use the episode."""
        batches = diagnostic_batches(self.datasets.test, self.episodes, config.classes_per_batch,
                                     config.samples_per_class, seed=5000)
        model.eval()
        found = {name: [] for name in ("backbone", "MPN over the episode", "MPN without messages",
                                       "alpha-QE within the episode")}
        for images, labels in batches:
            embeddings = model.retrieval_embeddings(images)
            views = {"backbone": embeddings,
                     "MPN over the episode": _run_mpn(model, embeddings, messages=True),
                     "MPN without messages": _run_mpn(model, embeddings, messages=False),
                     "alpha-QE within the episode": refine_embeddings(None, embeddings, config.samples_per_class - 1,
                                                                      "similarity_weighted", ALPHA)}
            for name, view in views.items():
                result = metrics.retrieval_metrics(view, labels, (1,))
                found[name].append((result["recall@1"], result["map@r"]))
        return {name: {"test_recall@1": float(np.mean([r for r, _ in values])),
                       "test_map@r": float(np.mean([m for _, m in values]))} for name, values in found.items()}


def derived(section: dict[str, list[dict]], names, field: str) -> dict[str, list[dict]]:
    """Per-seed entries of a measurement nested in the runs (refinement, episodes), as variants."""
    out = {}
    for name in names:
        for runs in [section.get(name)]:
            if not runs or field not in runs[0]:
                continue
            for method in runs[0][field]:
                out[f"{name}: {method}"] = [{"seed": r["seed"], **r[field][method]} for r in runs]
    return out


def selection(runs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Test R@1 at the epoch chosen on the validation classes, and at the best epoch by test R@1."""
    out = {}
    for name, seeds in runs.items():
        out[f"{name}: epoch chosen on validation"] = [
            {"seed": r["seed"], "test_recall@1": r["test_recall@1_per_epoch"][r["best_epoch"] - 1],
             "test_map@r": r["test_map@r_per_epoch"][r["best_epoch"] - 1], "epoch": r["best_epoch"]} for r in seeds]
        out[f"{name}: epoch chosen on test"] = [
            {"seed": r["seed"], "test_recall@1": max(r["test_recall@1_per_epoch"]),
             "test_map@r": r["test_map@r_per_epoch"][int(np.argmax(r["test_recall@1_per_epoch"]))],
             "epoch": int(np.argmax(r["test_recall@1_per_epoch"])) + 1} for r in seeds]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny networks, 2 seeds, short runs (~1 min)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--output", type=Path, default=REPO_ROOT / "bench" / "messages_study",
                        help="writes OUTPUT.md; the JSON goes to mpn_tutorial/results/ (default) or OUTPUT.json")
    parser.add_argument("--store", type=Path, default=REPO_ROOT / "data" / "study_runs")
    parser.add_argument("--data-root", type=Path, default=REPO_ROOT / "data")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    base = GLYPHS.replace(data_root=str(args.data_root))
    attention = GLYPHS_ATTENTION.replace(data_root=str(args.data_root))
    seeds, share_batches, episodes = args.seeds, 10, EPISODES
    if args.quick:
        tiny = dict(glyph_channels=(8, 16), embedding_dim=16, mpn_ff_dim=32, epochs=3, batches_per_epoch=4,
                    lr_decay_epochs=(2,))
        base = base.replace(**tiny)
        attention = attention.replace(**tiny, message_warmup_epochs=1, mpn_input_scale=2 * math.sqrt(16))
        seeds, share_batches, episodes = args.seeds[:2], 2, 3
    print_header("messages study (glyphs)", {"seeds": seeds, "store": args.store, "threads": thread_count()})
    study = Study(base, args.store, share_batches, episodes, test_classes=30 if args.quick else None)

    sections = {}
    for section, variants in configurations(base, attention).items():
        print(f"# {section}", flush=True)
        sections[section] = run_comparison(variants, seeds, study.run)
    on_off = sections["on_off"]
    runs_by_name = {name: runs for section in sections.values() for name, runs in section.items()}
    sections["refinement"] = derived(runs_by_name, REFINED, "refinement")
    sections["episodes"] = derived(runs_by_name, REFINED, "episodes")
    sections["test_selection"] = selection(on_off)
    sections["attention"] = {name: runs_by_name[name] for name in LEARNED_ATTENTION + ("oracle attention, warm-up",)}
    band = {key: noise_band([[runs_by_name[a], runs_by_name[b]] for a, b in NOISE_GROUPS], key)
            for key in ("test_recall@1", "test_map@r")}
    minutes = (time.perf_counter() - start) / 60
    header = {"commit": _commit(), "machine": f"{cpu_model()}, {thread_count()} threads, torch {torch.__version__}",
              "minutes_this_invocation": round(minutes, 1), "runs_trained_now": study.trained, "seeds": seeds,
              "quick": args.quick, "noise_band": band, "refine_k": REFINE_K, "alpha": ALPHA,
              "episodes": episodes, "steps_per_run": base.steps, "date": time.strftime("%Y-%m-%d")}
    output_json = (REPO_ROOT / "mpn_tutorial" / "results" / "messages_study.json" if args.output ==
                   parser.get_default("output") else args.output.with_suffix(".json"))
    output_json.parent.mkdir(parents=True, exist_ok=True)
    output_json.write_text(json.dumps({"header": header, **sections}, indent=1))
    report = write_report(args.output.with_suffix(".md"), header, sections)
    print(report)
    return 0


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO_ROOT,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def against_backbone(section: dict[str, list[dict]]) -> dict[str, str]:
    """Controls for a section derived per model ("MODEL: method"): every method against "MODEL: backbone"."""
    return {name: f"{name.split(': ')[0]}: backbone" for name in section if not name.endswith(": backbone")}


def write_report(path: Path, header: dict, sections: dict) -> str:
    band = header["noise_band"]
    lines = [
        "# The messages study (glyphs)", "",
        f"Written by `bench/messages_study.py` on {header['date']} at commit {header['commit'][:10]}: "
        f"{header['machine']}; {header['minutes_this_invocation']} min in this invocation "
        f"({header['runs_trained_now']} runs trained now, the rest from the run store). Seeds "
        f"{', '.join(map(str, header['seeds']))}; every run "
        f"{header['steps_per_run']} steps of 8×6 glyphs, best epoch chosen by validation R@1; test classes measured "
        "only. Mean ± standard deviation over seeds. Δ: the seed-paired difference to the row's control, mean ± std "
        "of the per-seed differences, with its t (4 degrees of freedom for 5 seeds: |t| > 2.78 at 95%). * marks a "
        "difference with |t| > 2.78 that is also larger than twice the noise band's standard error.", "",
        "**Noise band** (the spread a difference must beat): the root mean square of the seed-paired differences "
        "between messages-off configurations that compute the same function: "
        f"±{100 * band['test_recall@1']:.1f} points of R@1, ±{100 * band['test_map@r']:.1f} of MAP@R per seed.", "",
        "## Noise band: same function, other random draws", "",
        paired_table(sections["noise_band"], {second: first for first, second in NOISE_GROUPS}, band=band),
        "", "## Messages on against off", "",
        paired_table(sections["on_off"], {"published": "published, messages off",
                                    "glyphs-attention": "glyphs-attention, messages off"},
               ("test_recall@1", "test_map@r", "test_share"), band),
        "", "## The oracle bound: attention given by the labels during training", "",
        "Oracle attention: a_ij = 1/n_c over the n_c samples of i's class in the batch, i itself included (each "
        "sample receives the mean of its class, through W_v and W_o, initialised as in glyphs-attention).", "",
        paired_table(sections["oracle"], {"oracle attention, warm-up": "glyphs-attention, messages off",
                                    "oracle attention, no warm-up": "glyphs-attention, messages off"}, band=band),
        "", "## Decomposition: which part of the head carries the gain over cross-entropy", "",
        paired_table(sections["decomposition"], {
            "+ BNNeck classifier on the normalised embedding": "cross-entropy alone",
            "+ input map": "+ BNNeck classifier on the normalised embedding",
            "+ feed-forward block (= MPN head, messages off)": "+ input map",
            "+ messages (= published MPN)": "+ feed-forward block (= MPN head, messages off)"}, band=band),
        "", "## Zero W_o instead of the warm-up switch", "",
        paired_table(sections["zero_init_out"], {"zero W_o, messages from step 1": "glyphs-attention (warm-up switch)",
                                           "glyphs-attention (warm-up switch)": "glyphs-attention, messages off"},
               ("test_recall@1", "test_map@r", "test_share"), band),
        "", f"## Test-time refinement over k-reciprocal neighbourhoods (k = {header['refine_k']}), against query "
        "expansion on the same neighbourhoods", "",
        f"alpha-QE: weights cos^{header['alpha']:g}. Controls: each model's backbone embedding.", "",
        paired_table(sections["refinement"], against_backbone(sections["refinement"])),
        "", f"## Batch context at inference: {header['episodes']} held-out episodes of 8 test classes × 6", "",
        "Within-episode retrieval (each sample against the other 47). Control: the backbone embedding.", "",
        paired_table(sections["episodes"], against_backbone(sections["episodes"])),
        "", "## Choosing the epoch on the test classes (the official release) against the validation classes", "",
        paired_table(sections["test_selection"], {name: name.replace("on test", "on validation")
                                            for name in sections["test_selection"] if name.endswith("on test")}),
        "", "## What the learned attention finds, against the backbone's own similarity", "",
        "Share: same-class share of the attention to other samples on 10 held-out test-class batches (chance "
        "0.106). Backbone-similarity share: softmax_j(beta cos(e_i, e_j)) of the same model's backbone embeddings, "
        "with beta set per batch to the learned attention's sharpness (equal mean row entropy). Self-weight: the "
        "mean a_ii (uniform 1/48 = 0.021).", "",
        paired_table(sections["attention"], {}, ("test_recall@1", "test_share", "test_similarity_share",
                                                 "test_self_weight", "test_score_spread")),
        "",
    ]
    text = "\n".join(lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
