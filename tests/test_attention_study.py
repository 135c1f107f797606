"""The attention study's machinery, at CI size (`--quick`: tiny networks, one seed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_quick_study_trains_each_rung_with_its_control_and_writes_its_tables(tmp_path):
    output = tmp_path / "study"
    completed = subprocess.run([sys.executable, str(REPOSITORY / "bench" / "attention_study.py"), "--quick",
                                "--output", str(output), "--store", str(tmp_path / "store")],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = output.with_suffix(".md").read_text()
    assert "validation classes only" in report and "messages-off control" in report
    results = json.loads(output.with_suffix(".json").read_text())["results"]
    for runs in results.values():
        on, off = runs["on"], runs["off"]
        assert len(on) == len(off) == 1
        assert {"val_recall@1", "test_recall@1", "test_map@r", "test_share", "refined_recall@1"} <= set(on[0])
        assert "test_share" not in off[0] and "refined_recall@1" not in off[0]  # the control has no attention
