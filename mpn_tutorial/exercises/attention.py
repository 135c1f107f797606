"""04: the same-class share of one head's attention."""

from __future__ import annotations

import numpy as np

from mpn_tutorial.exercises.base import Exercise, Mistake, copied, evaluated, on_fresh_inputs


def _compare_share(answer, weights, labels) -> float:
    from mpn_tutorial.metrics import same_class_attention_share

    yours = float(np.asarray(evaluated(answer, weights, labels), dtype=np.float64))
    expected = float(same_class_attention_share(np.asarray(weights)[None], labels)[0])
    with_self = float(np.mean((np.asarray(weights) * (np.asarray(labels)[:, None] == np.asarray(labels))).sum(1)))
    if abs(yours - with_self) < 1e-6 and abs(with_self - expected) > 1e-6:
        raise AssertionError("that counts the query's attention to itself; use only the attention to the other samples")
    if abs(yours - expected) > 1e-6:
        raise AssertionError(f"you get {yours:.4f}, the library {expected:.4f}: per query, divide the attention to "
                             "other samples of its class by the attention to all other samples, then average")
    return yours


def _same_class_share(answer, weights, labels) -> str:
    yours = _compare_share(answer, weights, labels)
    generator = np.random.default_rng(2024)
    fresh_labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    fresh = generator.random((9, 9)) + 2.0 * (fresh_labels[:, None] == fresh_labels[None, :])
    on_fresh_inputs(lambda: _compare_share(answer, fresh / fresh.sum(1, keepdims=True), fresh_labels),
                     "a 9-sample head with classes of 3, 2 and 4")
    return f"this head keeps {100 * yours:.0f}% of its attention to others within the class"


def _example_head():
    generator = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 3)
    weights = generator.random((12, 12)) + 2.0 * (labels[:, None] == labels[None, :])
    return weights / weights.sum(1, keepdims=True), labels


EXERCISES = {
    "same_class_share": Exercise(
        "04", "build a same-class mask and an 'other sample' mask (not the diagonal)", _same_class_share,
        _example_head, (
            Mistake("counting the query's attention to itself",
                    lambda inputs: lambda w, y: float((w * (y[:, None] == y[None, :])).sum(1).mean()), "itself"),
            copied("returning the share the notebook printed", "same_class_share"),
        )),
}
