"""05: Recall@1 of every embedding snapshot."""

from __future__ import annotations

import numpy as np

from mpn_tutorial.exercises.base import Exercise, Mistake, copied, evaluated, on_fresh_inputs


def _compare_recalls(answer, snapshots, labels) -> dict:
    from mpn_tutorial.metrics import recall_at_k

    yours = evaluated(answer, snapshots, labels)
    if not isinstance(yours, dict):
        raise AssertionError("return a dict {epoch: Recall@1}")
    expected = {epoch: recall_at_k(embeddings, labels, ks=(1,))[1] for epoch, embeddings in snapshots}
    if sorted(yours) != sorted(expected):
        raise AssertionError(f"one entry per snapshot: epochs {sorted(expected)}, yours {sorted(yours)}")
    for epoch, value in expected.items():
        if abs(float(yours[epoch]) - value) > 1e-6:
            raise AssertionError(f"epoch {epoch}: {float(yours[epoch]):.3f} instead of {value:.3f}")
    return expected


def _recall_per_epoch(answer, snapshots, labels) -> str:
    expected = _compare_recalls(answer, snapshots, labels)
    generator = np.random.default_rng(2024)
    fresh_labels = np.repeat(np.arange(3), 4)
    fresh = [(epoch, generator.normal(size=(12, 5))) for epoch in (1, 4, 9)]
    on_fresh_inputs(lambda: _compare_recalls(answer, fresh, fresh_labels), "three snapshots of 12 random embeddings")
    first, last = min(expected), max(expected)
    return (f"Recall@1 of the subset goes from {100 * expected[first]:.0f}% (epoch {first}) to "
            f"{100 * expected[last]:.0f}% (epoch {last})")


def _example_snapshots():
    generator = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 4)
    centres = generator.normal(size=(5, 6))
    return [(epoch, centres[labels] * epoch + generator.normal(size=(20, 6))) for epoch in range(3)], labels


EXERCISES = {
    "recall_per_epoch": Exercise(
        "05", "loop over snapshots (epoch, embeddings) and call recall_at_k", _recall_per_epoch, _example_snapshots,
        (
            Mistake("one value for every epoch", lambda inputs: lambda s, y: {epoch: 0.5 for epoch, _ in s},
                    "instead of"),
            Mistake("only one epoch", lambda inputs: lambda s, y: {0: 0.5}, "one entry per snapshot"),
            copied("the notebook's recalls, returned for any snapshots", "recall_per_epoch"),
        )),
}
