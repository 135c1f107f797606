"""A classroom's run stores: each student trains into a store of their own and reads the one the
teacher filled before class (``$MPN_TUTORIAL_SHARED_RUNS``), which nobody writes, replaces or deletes.

The teacher's store here is left as the classroom set-up leaves it (readable by everyone, writable
by no one: ``chmod -R a+rX,a-w``). Run as root, the students' processes run as two other users where
they can run this Python, so that the permissions bind them as they bind students (root ignores
them); in every test the shared store's files, contents and modes are compared before and after.
"""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from shared_store_worker import STUDENTS_SEED, TEACHERS_SEED, tiny_config, tiny_datasets

from mpn_tutorial.callbacks import AttentionCapture
from mpn_tutorial.data.glyphs import cache_path
from mpn_tutorial.tools.checkpoints import load_checkpoint
from mpn_tutorial.tools.run_store import cache_key, train_cached

WORKER = Path(__file__).with_name("shared_store_worker.py")
STUDENT_IDS = (61001, 61002)  # uid = gid of the two students when the tests run as root


def _snapshot(folder: Path) -> dict:
    """Every file and folder under ``folder``: its mode, and its contents' hash for a file."""
    found = {".": oct(folder.stat().st_mode)}
    for path in sorted(folder.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        found[path.relative_to(folder).as_posix()] = (oct(path.stat().st_mode), digest)
    return found


@pytest.fixture(scope="module")
def classroom(data_root):
    """A folder readable by every user, holding the glyph data and the teacher's store: the teacher's
    run (seed 0), and under the key of the students' run (seed 1) a damaged entry (the first half of
    a copy) and a foreign file."""
    folder = Path(tempfile.mkdtemp(prefix="classroom-"))
    folder.chmod(0o755)
    data = folder / "data"
    teachers = tiny_config(data, TEACHERS_SEED)
    glyphs = cache_path(data_root, teachers.data_seed, teachers.image_size, 48)
    tiny_datasets(tiny_config(data_root, TEACHERS_SEED))  # generates the project's glyph cache if missing
    (data / "glyphs").mkdir(parents=True)
    shutil.copyfile(glyphs, data / "glyphs" / glyphs.name)
    shared = folder / "teacher" / "runs"
    teachers_run = train_cached(teachers, shared, datasets=tiny_datasets(teachers), progress=False)
    entry = shared / f"{cache_key(teachers)}.pt"
    damaged = entry.read_bytes()[: entry.stat().st_size // 2]
    (shared / f"{cache_key(tiny_config(data, STUDENTS_SEED))}.pt").write_bytes(damaged)
    (shared / "notes.txt").write_text("the teacher's, not a run\n")
    subprocess.run(["chmod", "-R", "a+rX,a-w", str(data), str(folder / "teacher")], check=True)
    yield {"folder": folder, "data": data, "shared": shared, "teachers_run": teachers_run,
           "snapshot": _snapshot(shared)}
    subprocess.run(["chmod", "-R", "u+w", str(folder)], check=True)
    shutil.rmtree(folder)


def test_a_run_missing_from_the_own_store_is_loaded_from_the_shared_store_without_a_copy(classroom, tmp_path):
    teachers = tiny_config(classroom["data"], TEACHERS_SEED)
    result = train_cached(teachers, tmp_path / "own", progress=False, shared_dir=classroom["shared"])
    assert result.seconds == classroom["teachers_run"].seconds  # loaded, not trained again
    assert not (tmp_path / "own").exists() or not any((tmp_path / "own").iterdir())
    assert _snapshot(classroom["shared"]) == classroom["snapshot"]


def test_the_own_store_is_read_before_the_shared_one(classroom, tmp_path):
    teachers = tiny_config(classroom["data"], TEACHERS_SEED)
    name = f"{cache_key(teachers)}.pt"
    entry = load_checkpoint(classroom["shared"] / name)
    entry["seconds"] = 12345.0  # the student's own entry of the same run, told apart by its time
    (tmp_path / "own").mkdir()
    torch.save(entry, tmp_path / "own" / name)
    result = train_cached(teachers, tmp_path / "own", progress=False, shared_dir=classroom["shared"])
    assert result.seconds == 12345.0


def test_a_damaged_shared_entry_is_left_as_it_is_and_the_run_trained_into_the_own_store(classroom, tmp_path):
    students = tiny_config(classroom["data"], STUDENTS_SEED)
    train_cached(students, tmp_path / "own", datasets=tiny_datasets(students), progress=False,
                 shared_dir=classroom["shared"])
    assert sorted(path.name for path in (tmp_path / "own").iterdir()) == [f"{cache_key(students)}.pt"]
    assert _snapshot(classroom["shared"]) == classroom["snapshot"]


def test_a_shared_entry_without_a_recording_asked_for_is_completed_in_the_own_store(classroom, tmp_path):
    teachers = tiny_config(classroom["data"], TEACHERS_SEED)
    datasets = tiny_datasets(teachers)
    images, labels = datasets.val.batch(range(12))
    train_cached(teachers, tmp_path / "own", callbacks=[AttentionCapture(images, labels)], datasets=datasets,
                 progress=False, shared_dir=classroom["shared"])
    own = load_checkpoint(tmp_path / "own" / f"{cache_key(teachers)}.pt")
    assert [key.split("-")[0] for key in own["callbacks"]] == ["attention"]
    assert _snapshot(classroom["shared"]) == classroom["snapshot"]


@functools.cache
def _students_are_other_users() -> bool:
    """As root, whether another user can run this Python (not when it lives in root's home, say)."""
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run([sys.executable, "-c", "import mpn_tutorial"], user=STUDENT_IDS[0],
                              group=STUDENT_IDS[0], extra_groups=[], cwd="/", capture_output=True).returncode == 0
    except PermissionError:
        return False


def _as_student(number: int, home: Path, shared: Path) -> dict:
    """What a student's process is started with: their own store, the teacher's, and as root their own
    user when they can run this Python (otherwise this user, for whom only the snapshot tells a write)."""
    home.mkdir()
    environment = {**os.environ, "HOME": str(home), "MPN_TUTORIAL_RUNS": str(home / "runs"),
                   "MPN_TUTORIAL_SHARED_RUNS": str(shared), "MPLCONFIGDIR": str(home / "matplotlib")}
    options = {"cwd": home, "env": environment}
    if _students_are_other_users():
        user = STUDENT_IDS[number]
        os.chown(home, user, user)
        options.update(user=user, group=user, extra_groups=[])
    return options


def test_two_students_train_and_load_at_once_from_one_read_only_shared_store(classroom):
    homes = [classroom["folder"] / f"student{number}" for number in (1, 2)]
    students = []
    for number, home in enumerate(homes):
        options = _as_student(number, home, classroom["shared"])
        students.append(subprocess.Popen([sys.executable, str(WORKER), str(classroom["data"])], text=True,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, **options))
    outputs = [student.communicate(timeout=600) for student in students]
    for student, (_, err) in zip(students, outputs):
        assert student.returncode == 0, err[-3000:]
    seen = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]

    assert _snapshot(classroom["shared"]) == classroom["snapshot"]  # nothing written, replaced or deleted there
    teachers_run = classroom["teachers_run"]
    name = f"{cache_key(tiny_config(classroom['data'], STUDENTS_SEED))}.pt"
    for home, student in zip(homes, seen):
        assert f"also read from {classroom['shared']}" in student["tutorial"]
        # every load of the teacher's run is the teacher's entry, whole: never trained again, never copied
        assert {run["seconds"] for run in student["teachers"]} == {teachers_run.seconds}
        assert all(run["test_metrics"] == teachers_run.test_metrics for run in student["teachers"])
        assert student["students_again"] == student["students"]  # trained once, then loaded from the own store
        assert sorted(path.name for path in (home / "runs").iterdir()) == [name]  # no copy, no *.partial
        assert load_checkpoint(home / "runs" / name)["test_metrics"] == student["students"]["test_metrics"]
    assert seen[0]["students"]["test_metrics"] == seen[1]["students"]["test_metrics"]  # the same run, whole
