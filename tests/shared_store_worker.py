"""Run by tests/test_shared_store.py: one student's notebook process in a classroom.

Usage: python shared_store_worker.py DATA_ROOT, with ``$MPN_TUTORIAL_RUNS`` (the student's own store)
and ``$MPN_TUTORIAL_SHARED_RUNS`` (the teacher's, read-only) set, as the classroom set-up sets them.
Through the notebooks' :class:`~mpn_tutorial.notebook.Tutorial`, it loads the teacher's run
(:data:`TEACHERS_SEED`) several times, trains a run the teacher's store lacks
(:data:`STUDENTS_SEED`), then loads both again; it prints one JSON line of what it saw.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from mpn_tutorial.data.build import Datasets, build_datasets
from mpn_tutorial.data.splits import ClassSubset
from mpn_tutorial.notebook import Tutorial
from mpn_tutorial.presets import get_preset
from mpn_tutorial.tools.runtime import pin_threads

TEACHERS_SEED = 0  # the run the teacher stored before class
STUDENTS_SEED = 1  # the run a student trains in class: its entry in the shared store is damaged


def tiny_config(data_root, seed: int):
    """A glyph MPN run of a few seconds: 2 epochs of 3 batches, a narrow network."""
    return get_preset("glyphs", data_root=str(data_root), seed=seed, epochs=2, batches_per_epoch=3,
                      glyph_channels=(8, 16), embedding_dim=16, mpn_ff_dim=32, eval_batch_size=2048)


def tiny_datasets(config) -> Datasets:
    """The run's datasets with 12 validation and 12 test classes, so that evaluating takes no time."""
    full = build_datasets(config)
    return Datasets(full.train, ClassSubset(full.val, np.arange(12)), ClassSubset(full.test, np.arange(12)))


def summary(result) -> dict:
    return {"seconds": result.seconds, "test_metrics": result.test_metrics, "best_epoch": result.best_epoch}


def main() -> None:
    pin_threads()  # an entry point, as start() is in a notebook
    data_root = Path(sys.argv[1])
    teachers, students = tiny_config(data_root, TEACHERS_SEED), tiny_config(data_root, STUDENTS_SEED)
    tutorial = Tutorial(teachers, data_root)
    tutorial.datasets = tiny_datasets(teachers)  # both runs read the same data
    seen = {"tutorial": repr(tutorial), "teachers": [], "load_seconds": []}
    for _ in range(3):  # loaded while the other student trains
        start = time.perf_counter()
        seen["teachers"].append(summary(tutorial.train(teachers)))
        seen["load_seconds"].append(time.perf_counter() - start)
    seen["students"] = summary(tutorial.train(students))
    seen["students_again"] = summary(tutorial.train(students))
    seen["teachers"].append(summary(tutorial.train(teachers)))
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
