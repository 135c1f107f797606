"""Comparisons over seeds (tools/stats.py) and `compare`: variants × seeds into their own folders, one
statistics module, one table, one rule for a difference that counts."""

from __future__ import annotations

import csv
import json
import math

import pytest
from test_benchmark_readers import make_cub

from mpn_tutorial.data.build import build_datasets
from mpn_tutorial.evaluation import attention_diagnostics, diagnostic_batches, evaluate_on_test
from mpn_tutorial.tools.checkpoints import load_checkpoint, load_model
from mpn_tutorial.tools.cli import main
from mpn_tutorial.tools.stats import compare, counts, describe, holm, noise_band, paired_difference, table

TINY = ["--epochs", "2", "--batches-per-epoch", "3", "--embedding-dim", "16", "--no-progress", "--device", "cpu"]
SMALLEST = ["--epochs", "1", "--batches-per-epoch", "1", "--embedding-dim", "8", "--glyph-channels", "4", "8",
            "--ff-dim", "8", "--no-progress", "--device", "cpu"]


def _runs(shift_on: float = 0.01, noise: float = 0.0) -> dict[str, list[dict]]:
    return {name: [{"seed": seed, "test_recall@1": 0.5 + shift + seed / 100 + noise * (-1) ** seed,
                    "test_map@r": 0.2 + shift, "test_share": 0.3, "test_self_weight": 0.1} for seed in range(3)]
            for name, shift in (("on", shift_on), ("off", 0.0))}


@pytest.mark.parametrize("keys", [("test_share", "test_self_weight"), ("test_recall@1", "test_map@r", "test_share")])
@pytest.mark.parametrize("paired", [True, False])
def test_every_row_of_a_table_has_as_many_cells_as_its_header(keys, paired):
    runs = _runs()
    comparisons = compare(runs, {"on": "off"}) if paired else None
    rows = table(runs, comparisons, keys=keys).splitlines()
    assert len({row.count("|") for row in rows}) == 1, rows  # a markdown table renders only when they agree


def test_holm_multiplies_the_smallest_p_by_the_family_size_and_stays_monotone():
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})


@pytest.mark.parametrize("band, marked", [(None, False), (0.5, False), (0.001, True)])
def test_a_star_marks_only_a_difference_significant_after_holm_and_beyond_a_measured_band(band, marked):
    runs = {"on": [{"seed": s, "test_recall@1": 0.60 + s / 1000, "test_map@r": 0.3} for s in range(5)],
            "off": [{"seed": s, "test_recall@1": 0.50 + s / 900, "test_map@r": 0.3} for s in range(5)]}
    bands = None if band is None else {"test_recall@1": band, "test_map@r": band}
    comparisons = compare(runs, {"on": "off"}, bands)
    assert comparisons["on"]["test_recall@1"]["p_holm"] < 0.05
    assert counts(comparisons["on"]) == marked
    assert ("*" in table(runs, comparisons).splitlines()[2]) == marked


def test_a_single_run_is_shown_as_its_value_without_a_spread():
    row = table({"one run": [{"seed": 0, "test_recall@1": 0.6403}]}, keys=("test_recall@1",)).splitlines()[2]
    assert "64.0" in row and "±" not in row


def test_a_paired_difference_matches_seeds_and_gives_mean_std_and_t():
    runs = [{"seed": 1, "x": 0.5}, {"seed": 0, "x": 0.3}, {"seed": 2, "x": 0.4}]
    reference = [{"seed": 0, "x": 0.2}, {"seed": 1, "x": 0.3}, {"seed": 2, "x": 0.4}]
    paired = paired_difference(runs, reference, "x")
    assert sorted(paired.differences) == pytest.approx([0.0, 0.1, 0.2])
    assert paired.mean == pytest.approx(0.1) and paired.std == pytest.approx(0.1)
    assert paired.t == pytest.approx(0.1 / (0.1 / math.sqrt(3))) and paired.p > 0.05


def test_the_noise_band_is_the_spread_of_differences_between_runs_of_one_function():
    a = [{"seed": s, "x": v} for s, v in enumerate([0.50, 0.60, 0.55])]
    b = [{"seed": s, "x": v} for s, v in enumerate([0.52, 0.57, 0.55])]
    assert noise_band([[a, b]], "x") == pytest.approx(math.sqrt((0.02**2 + 0.03**2 + 0) / 3))


@pytest.mark.parametrize("p_holm, beyond_noise, verdict", [
    (0.01, True, "significant and beyond the noise band"),
    (0.30, True, "beyond the noise band but not significant"),
    (0.01, False, "within the noise band"),
])
def test_a_described_difference_counts_only_when_significant_and_beyond_the_noise_band(p_holm, beyond_noise, verdict):
    comparison = {"test_recall@1": {"mean": -0.048, "std": 0.085, "n": 3, "p_holm": p_holm,
                                    "beyond_noise": beyond_noise}}
    assert describe(comparison) == f"-4.80 ± 8.50 points (3 seeds; Holm p {p_holm:.2g}, {verdict})"


def test_train_attention_none_is_the_messages_off_control_and_its_checkpoint_says_so(tmp_path, data_root):
    folder = tmp_path / "off"
    assert main(["train", "--preset", "glyphs-attention", *TINY, "--no-nmi", "--data-root", str(data_root),
                 "--attention", "none", "--message-warmup-epochs", "0", "--checkpoint-dir", str(folder)]) == 0
    model, config = load_model(folder / "best.pt")
    assert config.mpn_attention == "none" and config.message_warmup_epochs == 0 and not model.has_attention


def test_an_mpn_run_logs_the_attention_diagnostics_of_each_epochs_model(tmp_path, data_root):
    folder = tmp_path / "run"
    assert main(["train", *TINY, "--no-nmi", "--data-root", str(data_root), "--checkpoint-dir", str(folder)]) == 0
    rows = list(csv.DictReader((folder / "metrics.csv").open()))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    model, config = load_model(folder / "last.pt")  # the model after epoch 2
    val = build_datasets(config).val
    batches = diagnostic_batches(val, config.attention_batches, config.classes_per_batch, config.samples_per_class)
    expected = attention_diagnostics(model, batches)
    for key in ("share", "self_weight", "score_spread", "share_layer1_head1", "share_layer1_head2"):
        assert float(rows[-1][f"attention_{key}"]) == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key


def _compare(tmp_path, arguments):
    output = tmp_path / "comparison"
    status = main(["compare", *arguments, "--seeds", "0", "1", "--output", str(output)])
    assert status == 0
    return output, json.loads((output / "comparison.json").read_text())


def test_compare_trains_each_variant_and_seed_into_its_own_folder_and_writes_both_tables(tmp_path, data_root, capsys):
    smallest = ["--preset", "glyphs", *SMALLEST, "--data-root", str(data_root), "--variants", "messages",
                "one-head=--heads 1"]
    output, table = _compare(tmp_path, smallest)
    results = table["results"]
    assert list(results) == ["messages", "one-head"]
    for name, runs in results.items():
        assert [run["seed"] for run in runs] == [0, 1]
        for run in runs:  # each row is the run in its own folder, measured on the test classes
            model, config = load_model(output / f"{name}-seed{run['seed']}" / "best.pt")
            assert config.seed == run["seed"] and config.mpn_heads == (1 if name == "one-head" else 2)
            measured = evaluate_on_test(model, build_datasets(config), config.dataset, seed=config.seed)
            assert run["test_recall@1"] == pytest.approx(measured["recall@1"])
    markdown = (output / "comparison.md").read_text()
    one_head = next(line for line in markdown.splitlines() if line.startswith("| one-head | 2 |"))
    assert "| messages |" in one_head  # paired against the first variant, its control

    # run again: every run is found finished in its folder; nothing is trained or overwritten
    before = {path: path.stat().st_mtime_ns for path in output.rglob("*.pt")}
    capsys.readouterr()
    _, again = _compare(tmp_path, smallest)
    assert {path: path.stat().st_mtime_ns for path in output.rglob("*.pt")} == before
    assert again["results"]["messages"][0]["test_recall@1"] == results["messages"][0]["test_recall@1"]


def test_compare_runs_the_published_recipe_on_a_fake_cub_tree(tmp_path):
    root = make_cub(tmp_path / "CUB_200_2011", classes=tuple(range(1, 13)) + (101, 102, 103, 104), per_class=3)
    output, table = _compare(tmp_path, ["--preset", "cub", "--data-root", str(root), "--no-pretrained",
                                        "--backbone", "resnet18", "--image-size", "64", "--epochs", "1",
                                        "--batches-per-epoch", "2", "--device", "cpu", "--num-workers", "0",
                                        "--no-progress"])
    assert set(table["results"]) == {"messages", "no-messages"}
    assert any(line.startswith("| messages | 2 |") for line in (output / "comparison.md").read_text().splitlines())
    assert load_checkpoint(output / "no-messages-seed0" / "best.pt")["config"]["mpn_attention"] == "none"
