"""The messages study's machinery, at CI size (`--quick`: tiny networks, two seeds, short runs)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
KEYS = ("noise_band", "on_off", "oracle", "decomposition", "zero_init_out", "refinement", "test_selection",
        "attention", "episodes")


@pytest.mark.slow
def test_the_quick_study_writes_every_section_with_paired_seeds(tmp_path):
    output = tmp_path / "study"
    completed = subprocess.run([sys.executable, str(REPOSITORY / "bench" / "messages_study.py"), "--quick",
                                "--output", str(output), "--store", str(tmp_path / "store")],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    study = json.loads(output.with_suffix(".json").read_text())
    assert set(KEYS) <= set(study)
    for key in KEYS:
        assert study[key], key
        for variant, runs in study[key].items():
            assert [run["seed"] for run in runs] == [0, 1], (key, variant)
            assert all(0 <= run["test_recall@1"] <= 1 and 0 <= run["test_map@r"] <= 1 for run in runs), (key, variant)
    assert "published: alpha-QE" in study["refinement"] and "glyphs-attention: MPN refinement" in study["refinement"]
    assert study["header"]["noise_band"]["test_recall@1"] >= 0
    report = output.with_suffix(".md").read_text()
    assert "Noise band" in report and "oracle" in report.lower()


@pytest.mark.slow
def test_the_device_smoke_script_runs_compare_on_a_synthetic_cub_tree():
    completed = subprocess.run([sys.executable, str(REPOSITORY / "bench" / "device_smoke.py"), "--cpu-check"],
                               capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "device_smoke: messages_images_per_second:" in completed.stdout
    assert "device_smoke: no-messages_images_per_second:" in completed.stdout
