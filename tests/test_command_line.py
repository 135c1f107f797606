"""The command line never loses a run and answers every bad argument with one line and exit status 2."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mpn_tutorial.tools.cli import build_parser, main

# a glyph run small enough for seconds: narrow network, 1 epoch of 3 batches, no NMI
TINY = ["--preset", "glyphs", "--epochs", "1", "--batches-per-epoch", "3", "--embedding-dim", "16", "--no-nmi",
        "--no-progress", "--device", "cpu"]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch, data_root):
    """Run commands from an empty folder (runs/ is created there), reading the project's glyphs."""
    monkeypatch.chdir(tmp_path)
    return ["--data-root", str(data_root)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A finished tiny run: its best.pt, for the evaluate cases."""
    folder = tmp_path_factory.mktemp("trained")
    assert main(["train", *TINY, "--data-root", str(data_root), "--checkpoint-dir", str(folder)]) == 0
    return folder


def _files(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*"))
            if path.is_file()}


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("error:"), err
    return lines[0]


# --------------------------------------------------------------------------------------------
# Two runs, one folder
# --------------------------------------------------------------------------------------------


def test_a_second_run_with_another_hyperparameter_goes_to_its_own_folder(in_tmp, capsys):
    assert main(["train", *TINY, *in_tmp]) == 0
    first = Path("runs") / "glyphs-mpn-batches-per-epoch3-embedding-dim16-epochs1-seed0"
    assert first.is_dir(), sorted(Path("runs").iterdir())
    before = _files(first)
    capsys.readouterr()
    assert main(["train", *TINY, *in_tmp, "--lr", "0.1"]) == 0
    out = capsys.readouterr().out
    second = Path("runs") / "glyphs-mpn-batches-per-epoch3-embedding-dim16-epochs1-lr0.1-seed0"
    assert f"saved in {second}" in out and "test  R@1" in out  # the second run's outcome is on screen
    assert _files(first) == before  # the first run is untouched
    assert len((second / "metrics.csv").read_text().splitlines()) == 2  # header + its own epoch


def test_training_into_a_folder_holding_another_run_is_refused_and_changes_nothing(in_tmp, capsys, tmp_path):
    folder = tmp_path / "mine"
    assert main(["train", *TINY, *in_tmp, "--checkpoint-dir", str(folder)]) == 0
    before = _files(folder)
    capsys.readouterr()
    assert main(["train", *TINY, *in_tmp, "--checkpoint-dir", str(folder), "--lr", "0.1"]) == 2
    message = _one_line_error(capsys)
    assert "--resume" in message and "--checkpoint-dir" in message and "--overwrite" in message
    assert _files(folder) == before


def test_resuming_with_changed_settings_is_refused_and_names_the_change(in_tmp, capsys, tmp_path):
    folder = tmp_path / "mine"
    assert main(["train", *TINY, *in_tmp, "--checkpoint-dir", str(folder)]) == 0
    capsys.readouterr()
    assert main(["train", *TINY, *in_tmp, "--checkpoint-dir", str(folder), "--lr", "0.1", "--resume"]) == 2
    assert "lr=0.1" in _one_line_error(capsys)


def test_overwrite_replaces_the_run_and_metrics_hold_only_the_new_one(in_tmp, capsys, tmp_path):
    folder = tmp_path / "mine"
    assert main(["train", *TINY, *in_tmp, "--checkpoint-dir", str(folder)]) == 0
    assert main(["train", *TINY, *in_tmp, "--checkpoint-dir", str(folder), "--lr", "0.01", "--overwrite"]) == 0
    rows = (folder / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2
    assert torch.load(folder / "last.pt", weights_only=True)["config"]["lr"] == 0.01


# --------------------------------------------------------------------------------------------
# Bad arguments: every option of every command
# --------------------------------------------------------------------------------------------

A_FILE = str(Path(__file__).resolve().parents[1] / "pyproject.toml")  # a file where a folder is expected

def _out_of_range(field) -> tuple[str, str]:
    """A value outside a setting's declared range, and what the refusal must say."""
    from mpn_tutorial.tools.settings import choices_of

    meta = field.metadata
    if choices_of(field) is not None:
        return "nope", "invalid choice"
    if meta["path"] == "file":
        return "missing.pth", "not an existing file"
    if meta["path"] == "folder":
        return A_FILE, "is a file"
    if meta["pattern"]:
        return "tpu", "must be text matching"
    if meta["low"] is not None:
        return f"{meta['low'] - 1:g}", f"at least {meta['low']:g}"
    return f"{meta['above']:g}", f"above {meta['above']:g}"


def _setting_cases() -> list[tuple[list[str], str]]:
    """One refused value per setting flag that takes a value, from the setting's own declaration."""
    import dataclasses

    from mpn_tutorial.config import TrainConfig
    from mpn_tutorial.tools.settings import flag_of, kind_of

    return [([f"--{flag_of(field)}", _out_of_range(field)[0]], _out_of_range(field)[1])
            for field in dataclasses.fields(TrainConfig) if kind_of(field)[0] is not bool]


BAD_ARGUMENTS = {
    "train": _setting_cases() + [
        # values of the wrong type, and the rules that tie settings together
        (["--epochs", "two"], "a whole number"),
        (["--lr", "nan"], "above 0"),
        (["--lr", "fast"], "a number"),
        (["--seed", "1.5"], "a whole number"),
        (["--heads", "3"], "divisible"),
        (["--temperature", "inf"], "above 0"),
        (["--classes-per-batch", "1000"], "classes"),
        (["--backbone", "resnet18"], "glyph_cnn"),
        (["--message-warmup-epochs", "1"], "message_warmup_epochs"),
        (["--image-size", "100"], "image_size"),
        (["--glyph-channels", "8", "0"], "at least 1"),
        (["--checkpoint-dir", A_FILE], "is a file"),
        (["--unknown-flag"], "unrecognized"),
    ],
    "compare": [
        (["--variants", "nope"], "unknown variant"),
        (["--variants", "bad name!=--lr 1"], "a variant is NAME"),
        (["--variants", "x=--no-such-flag"], "not a set of train flags"),
        (["--variants", "a=--lr 0.1", "a=--lr 0.2"], "must differ"),
        (["--seeds", "-1"], "at least 0"),
        (["--output", A_FILE], "is a file"),
        (["--seed", "3"], "use --seeds"),
        (["--variants", "a=--seed 3"], "use --seeds"),
    ],
    "evaluate": [
        (["--checkpoint", "missing.pt"], "not an existing file"),
        (["--checkpoint", A_FILE], "not a readable mpn_tutorial checkpoint"),
        (["--checkpoint", "{best}", "--preset", "nope"], "invalid choice"),
        (["--checkpoint", "{best}", "--preset", "cub"], "trained with preset 'glyphs'"),
        (["--checkpoint", "{best}", "--data-root", A_FILE], "is a file"),
        (["--checkpoint", "{best}", "--device", "tpu"], "must be text matching"),
        (["--checkpoint", "{best}", "--refine-k", "-1"], "at least 0"),
        (["--checkpoint", "{ce_best}", "--refine-k", "5"], "message passing"),
        (["--checkpoint", "{best}", "--refine-method", "nope"], "invalid choice"),
        ([], "required"),
    ],
    "make-data": [
        (["nope"], "invalid choice"),
        (["glyphs", "--root", A_FILE], "is a file"),
        (["glyphs", "--data-root", A_FILE], "is a file"),
        (["glyphs", "--data-seed", "-1"], "at least 0"),
        (["glyphs", "--image-size", "5"], "at least 8"),
        (["glyphs", "--image-size", "100"], "from 8 to 64"),
        (["glyphs", "--images-per-class", "1"], "at least 2"),
    ],
    "answer-key": [
        (["--notebooks", A_FILE], "is a file"),
        (["--notebooks", "{empty}"], "no numbered notebooks"),
        (["--output", A_FILE], "is a file"),
    ],
    "fetch": [
        (["nope"], "invalid choice"),
        (["cub", "--root", A_FILE], "is a file"),
        (["cub", "--data-root", A_FILE], "is a file"),
        ([], "required"),
    ],
}
# every train flag is also a flag of compare (for all its variants)
BAD_ARGUMENTS["compare"] += [(arguments, expected) for arguments, expected in BAD_ARGUMENTS["train"]
                             if arguments[0] not in ("--checkpoint-dir", "--seed")]
CASES = [(command, arguments, expected) for command, cases in BAD_ARGUMENTS.items()
         for arguments, expected in cases]


@pytest.fixture(scope="module")
def checkpoints(trained, tmp_path_factory, data_root):
    ce = tmp_path_factory.mktemp("ce")
    assert main(["train", *TINY, "--loss", "ce", "--data-root", str(data_root), "--checkpoint-dir", str(ce)]) == 0
    return {"best": str(trained / "best.pt"), "ce_best": str(ce / "best.pt"),
            "empty": str(tmp_path_factory.mktemp("empty"))}


@pytest.mark.parametrize("command, arguments, expected", CASES,
                         ids=[f"{c}:{' '.join(a) or 'nothing'}" for c, a, _ in CASES])
def test_a_bad_argument_gets_one_line_and_exit_status_2(command, arguments, expected, checkpoints, capsys,
                                                        monkeypatch, data_root, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing a refused command might write lands in the project
    arguments = [a.format(**checkpoints) for a in arguments]
    if command in ("train", "compare"):
        tiny = TINY if command == "train" else [a for a in TINY if a != "--no-nmi"]
        arguments = [*tiny, "--data-root", str(data_root), *arguments]
    try:
        status = main([command, *arguments])
    except SystemExit as exit_:  # argparse's own refusal
        status = exit_.code
    assert status == 2
    assert expected in _one_line_error(capsys)


def test_every_option_of_every_command_has_a_bad_argument_case():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, subparser in commands.items():
        tried = {token for arguments, _ in BAD_ARGUMENTS[name] for token in arguments if token.startswith("--")}
        untried = [action.option_strings for action in subparser._actions
                   if action.option_strings and "--help" not in action.option_strings and action.nargs != 0
                   and not set(action.option_strings) & tried]
        assert not untried, f"{name}: no bad-value case for {untried}"


def test_every_setting_has_exactly_one_flag_of_train_and_compare_with_its_declared_range():
    import dataclasses

    from mpn_tutorial.config import TrainConfig
    from mpn_tutorial.tools.settings import describe_range, has_range

    commands = build_parser()._subparsers._group_actions[0].choices
    for command in ("train", "compare"):
        for field in dataclasses.fields(TrainConfig):
            flags = [action for action in commands[command]._actions if action.dest == field.name]
            assert len(flags) == 1, f"{command}: {field.name} has {len(flags)} flags"
            assert has_range(field) and describe_range(field) in flags[0].help, field.name


def test_the_default_folder_name_leaves_out_where_and_how_a_run_computes():
    from mpn_tutorial.presets import get_preset
    from mpn_tutorial.tools.cli import run_name

    config = get_preset("cub", lr=1e-4, seed=2)
    name = run_name(config, {"lr": 1e-4, "weights_path": "/w/r50.pth", "device": "cuda:1", "num_workers": 8,
                             "seed": 2, "mpn_identity_values": True})
    assert name == "cub-mpn-identity-values-lr0.0001-seed2"


def test_a_bad_argument_prints_no_traceback_from_a_real_process(tmp_path):
    completed = subprocess.run([sys.executable, "-m", "mpn_tutorial", "train", "--heads", "0"], capture_output=True,
                               text=True, timeout=120, cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and "Traceback" not in completed.stderr


def test_a_corrupt_checkpoint_gets_one_line_without_torchs_unsafe_advice(tmp_path, trained, capsys):
    broken = tmp_path / "best.pt"
    broken.write_bytes((trained / "best.pt").read_bytes()[:5000])  # an interrupted copy
    assert main(["evaluate", "--checkpoint", str(broken)]) == 2
    line = _one_line_error(capsys)
    assert "not a readable mpn_tutorial checkpoint" in line and "weights_only" not in line


# --------------------------------------------------------------------------------------------
# A killed run resumes to the same weights
# --------------------------------------------------------------------------------------------


def test_a_run_killed_mid_epoch_keeps_its_last_checkpoint_and_resumes_bit_for_bit(tmp_path, data_root):
    worker = Path(__file__).with_name("sigkill_worker.py")
    environment = {**os.environ, "MPN_TUTORIAL_THREADS": "1"}

    def run(folder, *extra):
        return subprocess.run([sys.executable, str(worker), str(data_root), str(folder), *extra],
                              capture_output=True, text=True, timeout=300, env=environment)

    killed = run(tmp_path / "killed", "--kill-at-step", "9")  # epoch 3 of 4, batch 1 of 4
    assert killed.returncode == -9, killed.stderr[-2000:]
    saved = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert saved["epoch"] == 2  # the previous epoch's checkpoint, intact
    assert len((tmp_path / "killed" / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    resumed = run(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    uninterrupted = run(tmp_path / "whole")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]
    final = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    reference = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    for name, value in reference["model"].items():
        assert torch.equal(value, final["model"][name]), name
    assert final["history"] == [dict(row, seconds=mine["seconds"], train_seconds=mine["train_seconds"])
                                for row, mine in zip(reference["history"], final["history"])]
    assert (tmp_path / "killed" / "metrics.csv").read_text().count("\n") == 5  # header + 4 epochs, one run


# --------------------------------------------------------------------------------------------
# Errors of the machine are not usage errors
# --------------------------------------------------------------------------------------------


def _tiny_run(folder, data_root, epochs):
    arguments = list(TINY)
    arguments[arguments.index("--epochs") + 1] = str(epochs)
    return ["train", *arguments, "--data-root", str(data_root), "--checkpoint-dir", str(folder)]


def test_a_disk_that_fills_up_names_the_file_exits_1_and_keeps_the_earlier_checkpoints(tmp_path, data_root,
                                                                                       monkeypatch, capsys):
    from mpn_tutorial.tools import atomic
    from mpn_tutorial.tools.checkpoints import load_checkpoint, load_model

    folder = tmp_path / "run"
    real_fsync, writes = os.fsync, []

    def fsync_then_full(descriptor):  # the first epoch's files are written; then the disk is full
        writes.append(descriptor)
        if len(writes) > 3:  # best.pt, last.pt, metrics.csv of epoch 1
            raise OSError(28, "No space left on device")
        real_fsync(descriptor)

    monkeypatch.setattr(atomic.os, "fsync", fsync_then_full)
    assert main(_tiny_run(folder, data_root, epochs=2)) == 1
    line = _one_line_error(capsys)
    assert "no space left" in line and str(folder) in line and "MiB free" in line
    assert "last.pt holds epoch 1 and is intact" in line and "--resume" in line
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1
    load_model(folder / "best.pt")
    assert not list(folder.glob("*.partial"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_real_small_tmpfs_that_fills_up_gives_the_same_clear_error(tmp_path, data_root):
    probe = tmp_path / "probe"
    assert main(_tiny_run(probe, data_root, epochs=1)) == 0
    used = sum(path.stat().st_size for path in probe.rglob("*") if path.is_file())
    disk = tmp_path / "disk"
    disk.mkdir()
    size_kib = (used + (probe / "last.pt").stat().st_size // 2) // 1024  # epoch 1 fits, epoch 2's new file does not
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        completed = subprocess.run([sys.executable, "-m", "mpn_tutorial", *_tiny_run(disk / "run", data_root, 2)],
                                   capture_output=True, text=True, timeout=300)
        assert completed.returncode == 1, completed.stderr[-2000:]
        lines = completed.stderr.strip().splitlines()
        assert len(lines) == 1 and "no space left" in lines[0] and "intact" in lines[0], completed.stderr
        saved = torch.load(disk / "run" / "last.pt", weights_only=True)
        assert saved["epoch"] == 1
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_valueerror_from_a_bug_inside_the_library_shows_its_traceback_says_bug_and_exits_1(tmp_path, data_root):
    # a bug, simulated: a ValueError (the type a bad unpacking raises) from deep inside training, which no
    # input can cause; it must not read as the user's fault
    code = ("import sys, mpn_tutorial.training as t\n"
            "def broken(*args, **kwargs):\n    first, second = (1, 2, 3)\n"
            "t.evaluate = broken\n"
            "from mpn_tutorial.tools.cli import main\n"
            f"sys.exit(main({_tiny_run(tmp_path / 'run', data_root, 1)!r}))\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    assert "Traceback" in completed.stderr and "ValueError: too many values to unpack" in completed.stderr
    assert "this is a bug in mpn_tutorial" in completed.stderr.splitlines()[-1]


@pytest.mark.parametrize("error, machine", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "the GPU"),
    (MemoryError(), "the machine (CPU memory)"),
])
def test_out_of_memory_says_what_ran_out_and_that_nothing_was_saved_and_exits_1(error, machine, monkeypatch,
                                                                                capsys, data_root, tmp_path):
    import mpn_tutorial.training

    def out_of_memory(*args, **kwargs):
        raise error

    monkeypatch.setattr(mpn_tutorial.training, "train", out_of_memory)
    assert main(_tiny_run(tmp_path / "run", data_root, 1)) == 1
    line = _one_line_error(capsys)
    assert f"{machine} ran out of memory" in line and "nothing of it is saved" in line
    assert "--classes-per-batch" in line and "--checkpointing" in line


def test_a_disk_full_before_the_first_epoch_ends_says_nothing_was_saved(tmp_path, data_root, monkeypatch, capsys):
    from mpn_tutorial.tools import atomic

    def full(descriptor):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    assert main(_tiny_run(tmp_path / "run", data_root, epochs=1)) == 1
    line = _one_line_error(capsys)
    assert "no space left" in line and "nothing of it is saved" in line and "intact" not in line


def test_evaluate_prints_what_the_attention_of_an_mpn_checkpoint_does(trained, capsys):
    assert main(["evaluate", "--checkpoint", str(trained / "best.pt"), "--no-nmi"]) == 0
    shown = capsys.readouterr().out
    for split in ("validation", "test"):
        line = next(line for line in shown.splitlines()
                    if line.startswith("attention on ") and f" {split}-class" in line)
        assert "same-class share" in line and "self-weight" in line and "score spread" in line
