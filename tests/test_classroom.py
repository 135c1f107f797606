"""The teachers' commands (README, "For teachers"): the CPU-only PyTorch build chosen at set-up, a
student's notebooks reset to the committed ones, the run store emptied, and what the classroom hub
starts for a student (classroom/start-singleuser.sh). The hub itself needs root, accounts and
configurable-http-proxy: classroom/check_hub.py checks a running one."""

import os
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _make(*arguments: str, cwd: Path = REPOSITORY, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-f", str(REPOSITORY / "Makefile"), *arguments], cwd=cwd,
                          capture_output=True, text=True, env=env)


def _install_lines(*variables: str) -> list[str]:
    """The commands `make setup` would run to install the package (pyproject.toml taken as changed)."""
    planned = _make("-n", "-W", "pyproject.toml", "setup", *variables)
    assert planned.returncode == 0, planned.stderr
    return [line for line in planned.stdout.splitlines() if "pip install" in line and "-e" in line]


def test_torch_cpu_installs_from_pytorchs_cpu_index_and_checks_the_build():
    planned = _make("-n", "-W", "pyproject.toml", "setup", "TORCH=cpu").stdout
    assert [f"--extra-index-url {CPU_INDEX}" in line for line in _install_lines("TORCH=cpu")] == [True]
    assert "torch.version.cuda is None" in planned  # the CUDA build, had pip chosen it, would stop the set-up


def test_the_default_set_up_installs_pips_default_torch():
    assert [line for line in _install_lines() if "index-url" in line or "whl/cpu" in line] == []


def test_an_unknown_torch_build_is_refused():
    planned = _make("-n", "-W", "pyproject.toml", "setup", "TORCH=cuda")
    assert planned.returncode != 0 and "TORCH=cuda is not a build this Makefile knows" in planned.stderr


def test_reset_notebooks_restores_the_committed_notebooks_and_nothing_else(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPOSITORY), str(clone)], check=True)
    edited = clone / "notebooks" / "01_data_and_retrieval.ipynb"
    committed = edited.read_bytes()
    edited.write_text('{"cells": []}')
    (clone / "notebooks" / "my_notes.txt").write_text("mine")
    (clone / "README.md").write_text("edited")
    reset = _make("reset-notebooks", cwd=clone)
    assert reset.returncode == 0, reset.stderr
    assert edited.read_bytes() == committed
    assert (clone / "notebooks" / "my_notes.txt").read_text() == "mine"
    assert (clone / "README.md").read_text() == "edited"


@pytest.mark.parametrize("where", ["no_git", "inside_another_checkout"])
def test_reset_notebooks_refuses_outside_a_git_checkout_of_the_project(tmp_path, where):
    folder = tmp_path / "copy"
    (folder / "notebooks").mkdir(parents=True)
    (folder / "notebooks" / "01_data_and_retrieval.ipynb").write_text("edited")
    if where == "inside_another_checkout":  # e.g. an unpacked archive inside someone's repository
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    reset = _make("reset-notebooks", cwd=folder)
    assert reset.returncode == 2
    assert "is not a git checkout" in reset.stdout
    assert (folder / "notebooks" / "01_data_and_retrieval.ipynb").read_text() == "edited"


def test_clean_runs_empties_the_run_store_and_not_the_shared_one(tmp_path):
    own, shared = tmp_path / "own", tmp_path / "shared"
    for store in (own, shared):
        store.mkdir()
        (store / "glyphs-mpn-0123456789ab.pt").write_bytes(b"run")
    (own / "glyphs-mpn-ba9876543210.pt4xk2.partial").write_bytes(b"half")
    (own / "notes.txt").write_text("not a run")
    env = {**os.environ, "MPN_TUTORIAL_RUNS": str(own), "MPN_TUTORIAL_SHARED_RUNS": str(shared)}
    cleaned = _make("clean-runs", env=env)
    assert cleaned.returncode == 0, cleaned.stderr
    assert sorted(path.name for path in own.iterdir()) == ["notes.txt"]
    assert sorted(path.name for path in shared.iterdir()) == ["glyphs-mpn-0123456789ab.pt"]


def _start_as_student(home: Path, bin_folder: Path) -> dict:
    """Run classroom/start-singleuser.sh as the hub would, with a stand-in single-user server that
    prints its environment; returns that environment."""
    env = {"HOME": str(home), "PATH": f"{bin_folder}:/usr/bin:/bin",
           "MPN_TUTORIAL_NOTEBOOKS": str(REPOSITORY / "notebooks")}
    started = subprocess.run([str(REPOSITORY / "classroom" / "start-singleuser.sh"), "--debug"], env=env,
                             capture_output=True, text=True, check=True)
    return dict(line.split("=", 1) for line in started.stdout.splitlines() if "=" in line)


def test_a_students_first_start_copies_the_notebooks_and_later_starts_keep_their_edits(tmp_path):
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    server = bin_folder / "jupyterhub-singleuser"
    server.write_text('#!/bin/sh\necho "ARGUMENTS=$*"\nenv\n')
    server.chmod(0o755)
    home = tmp_path / "home"
    first = _start_as_student(home, bin_folder)
    notebooks = home / "mpn_tutorial" / "notebooks"
    committed = sorted(path.name for path in (REPOSITORY / "notebooks").glob("*.ipynb"))
    assert sorted(path.name for path in notebooks.iterdir()) == committed
    assert first["MPN_TUTORIAL_RUNS"] == str(home / "mpn_tutorial" / "runs")
    assert (home / "mpn_tutorial" / "runs").is_dir() and first["ARGUMENTS"] == "--debug"
    (notebooks / committed[0]).write_text("the student's edit")
    _start_as_student(home, bin_folder)
    assert (notebooks / committed[0]).read_text() == "the student's edit"
