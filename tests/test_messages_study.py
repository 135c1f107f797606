"""The messages study's machinery: its rules on numbers we know, and the whole script at CI size (`--quick`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "bench"))

import messages_study  # noqa: E402

KEYS = ("budget_curve", "converged_budget", "noise_band", "on_off", "decomposition", "normalised_softmax", "oracle",
        "zero_init_out", "aggregation", "ablation_heads_layers", "attention", "episodes_tuned")


class _Runs:
    """A stand-in for the study's store: ``runs(name, budget, seeds)`` from a table of values."""

    def __init__(self, values: dict[tuple[str, float], list[float]]) -> None:
        self.values = values

    def runs(self, name, budget, seeds=(0, 1, 2)):
        return [{"seed": seed, "steps": int(600 * budget), "val_recall@1": value}
                for seed, value in zip(seeds, self.values[(name, budget)])]


def test_the_converged_budget_is_the_first_whose_doubling_moves_every_headline_variant_less_than_the_band():
    noise = {1: 0.02, 2: 0.01, 4: 0.005}  # the half-width of the same-function pairs' differences per budget
    gains = {1: 0.05, 2: 0.03, 4: 0.001, 8: 0.0}  # what each headline variant gains on reaching each budget
    values = {}
    for budget in (1, 2, 4, 8):
        level = sum(gain for b, gain in gains.items() if b <= budget)
        for name in messages_study.HEADLINE:
            values[(name, budget)] = [level, level + 0.001, level - 0.001]
        for first, second in messages_study.NOISE_GROUPS:
            if budget in noise:
                values[(first, budget)] = [level, level, level]
                values[(second, budget)] = [level + noise[budget], level - noise[budget], level]
    found = messages_study.converged_budget(_Runs(values), [1, 2, 4, 8])
    # ×1 -> ×2 gains 0.03 against a band of 0.016 (not converged); ×2 -> ×4 gains 0.001 against 0.008
    assert found["factor"] == 2 and found["steps"] == 1200
    assert [check["converged"] for check in found["checks"]] == [False, True, True]


@pytest.mark.slow
def test_a_test_time_pick_at_an_open_edge_of_its_grid_is_reported_and_one_inside_it_or_at_a_closed_edge_is_not():
    grids = {"alpha": [0, 1, 3], "mpn_alpha": [0, 1, 3], "sharpness": [1, 3, 10], "k": [5, 10, 20],
             "neighbourhood alpha": [0.5, 1, 3]}
    inside = {"seed": 0, "alpha": 0, "mpn_alpha": 1, "sharpness": 3,  # alpha 0: no weighting, a closed end
              "neighbourhoods": {"average QE": {"k": 10, "alpha": 0}, "alpha-QE": {"k": 10, "alpha": 0.5},
                                 "MPN refinement": {"k": 10, "alpha": 0}}}
    at_edges = {"seed": 1, "alpha": 3, "mpn_alpha": 1, "sharpness": 1,
                "neighbourhoods": {"average QE": {"k": 20, "alpha": 0}, "alpha-QE": {"k": 10, "alpha": 3},
                                   "MPN refinement": {"k": 5, "alpha": 0}}}
    assert messages_study.picks_at_an_edge([inside], grids) == []
    assert messages_study.picks_at_an_edge([inside, at_edges], grids) == [
        "alpha = 3 (seed 1)", "sharpness = 1 (seed 1)", "average QE k = 20 (seed 1)", "alpha-QE alpha = 3 (seed 1)",
        "MPN refinement k = 5 (seed 1)"]
    # without messages the MPN's refinement ignores the neighbourhood: its k is no choice
    assert "MPN refinement k = 5 (seed 1)" not in messages_study.picks_at_an_edge([at_edges], grids, messages=False)


def test_the_quick_study_writes_every_section_with_paired_seeds_steps_and_best_epochs(tmp_path):
    output = tmp_path / "study"
    completed = subprocess.run([sys.executable, str(REPOSITORY / "bench" / "messages_study.py"), "--quick",
                                "--output", str(output), "--store", str(tmp_path / "store")],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    study = json.loads(output.with_suffix(".json").read_text())
    assert set(KEYS) <= set(study), sorted(set(KEYS) - set(study))
    assert len(study["budget_curve"]) == 2  # the quick study's two budgets
    for steps, variants in study["budget_curve"].items():
        for variant, runs in variants.items():
            assert [run["seed"] for run in runs] == [0, 1], (steps, variant)
            assert all(run["steps"] == int(steps) and 1 <= run["best_epoch"] <= len(run["val_recall1_per_epoch"])
                       for run in runs), (steps, variant)
            assert {"val_recall@1", "test_recall@1", "test_map@r"} <= set(runs[0])
    b_star = str(study["converged_budget"]["steps"])
    assert study["on_off"]["runs"]["published"][0]["steps"] == int(b_star)
    for section in ("on_off", "decomposition", "oracle", "aggregation", "ablation_heads_layers"):
        for comparisons in study[section]["comparisons"].values():
            for comparison in comparisons.values():
                assert comparison["p"] <= comparison["p_holm"] <= 1, section
    assert "chosen" in study["normalised_softmax"]
    episodes = study["episodes_tuned"]["glyphs-attention"]["episodes"]["runs"]
    assert {"backbone", "alpha-QE within the episode", "backbone-similarity twin of the MPN"} <= set(episodes)
    report = output.with_suffix(".md").read_text()
    assert "B\\*" in report and "Noise band" in report and "Holm" in report


@pytest.mark.slow
def test_the_device_smoke_script_runs_compare_on_a_synthetic_cub_tree():
    completed = subprocess.run([sys.executable, str(REPOSITORY / "bench" / "device_smoke.py"), "--cpu-check"],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "device_smoke: messages_images_per_second:" in completed.stdout
    assert "device_smoke: no-messages_images_per_second:" in completed.stdout


def test_the_readmes_study_block_is_what_the_shipped_json_gives():
    study = json.loads((REPOSITORY / "mpn_tutorial" / "results" / "messages_study.json").read_text())
    readme = (REPOSITORY / "README.md").read_text()
    start = readme.index("\n", readme.index(messages_study.README_BEGIN)) + 1
    block = readme[start:readme.index(messages_study.README_END)]
    assert block.strip() == messages_study.readme_block(study).strip()  # numbers typed by hand would drift
