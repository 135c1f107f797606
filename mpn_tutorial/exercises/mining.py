"""02: batch-hard mining (the triplets the hard miner picks)."""

from __future__ import annotations

import torch

from mpn_tutorial.exercises.base import Exercise, Mistake, copied, evaluated, generator, on_fresh_inputs
from mpn_tutorial.miners import pair_masks, pairwise_distances


def _compare_batch_hard(answer, embeddings, labels) -> int:
    from mpn_tutorial.losses import TripletLoss

    yours = evaluated(answer, embeddings, labels)
    expected = TripletLoss(mining="hard").mine(embeddings, labels)
    if not isinstance(yours, (tuple, list)) or len(yours) != 3:
        raise AssertionError("return three index tensors: (anchors, hardest positives, hardest negatives)")
    distances = pairwise_distances(embeddings)
    positive, negative = pair_masks(labels)
    without_positive = set(torch.nonzero(~positive.any(1)).flatten().tolist())
    kept = sorted(without_positive & set(torch.as_tensor(yours[0]).flatten().tolist()))
    if kept:
        raise AssertionError(f"sample {kept[0]} is the only one of its class, so it has no positive, yet your anchors "
                             "include it. Keep only the anchors that have a positive and a negative")
    closest_positive = distances.masked_fill(~positive, float("inf")).argmin(1)[expected[0]]
    farthest_negative = distances.masked_fill(~negative, -1.0).argmax(1)[expected[0]]
    for name, mine, reference, easy in zip(("anchors", "hardest positives", "hardest negatives"), yours, expected,
                                           (None, closest_positive, farthest_negative)):
        mine = torch.as_tensor(mine)
        if easy is not None and mine.shape == easy.shape and torch.equal(mine.long(), easy):
            which = "closest positive" if name == "hardest positives" else "farthest negative"
            raise AssertionError(f"your {name} are each anchor's {which}, the easiest one: batch-hard takes the "
                                 f"{'farthest positive' if name == 'hardest positives' else 'closest negative'}")
        if mine.shape != reference.shape or not torch.equal(mine.long(), reference):
            hint = {"hardest positives": "the farthest sample of the anchor's class (never the anchor itself)",
                    "hardest negatives": "the closest sample of another class"}.get(name, "every anchor")
            raise AssertionError(f"your {name} differ from the library's; they should be {hint}")
    return len(expected[0])


def _batch_hard(answer, embeddings, labels) -> str:
    count = _compare_batch_hard(answer, embeddings, labels)
    # unlike a P×K batch, this one holds a sample alone in its class (label 4): no anchor, it has no positive
    fresh, fresh_labels = torch.randn(13, 6, generator=generator()), torch.tensor([0, 0, 0, 1, 1, 1, 4, 2, 2, 2,
                                                                                  3, 3, 3])
    on_fresh_inputs(lambda: _compare_batch_hard(answer, fresh, fresh_labels),
                     "a batch of 4 classes × 3 and one sample alone in its class")
    return f"your batch-hard mining picks the library's {count} triplets (and on a batch of the check's own)"


def _example_batch():
    return torch.randn(24, 8, generator=generator(0)), torch.arange(6).repeat_interleave(4)


def _closest_positives(embeddings, labels):
    from mpn_tutorial.solutions import batch_hard

    anchors, _, negatives = batch_hard(embeddings, labels)
    positive, _ = pair_masks(labels)
    return anchors, pairwise_distances(embeddings).masked_fill(~positive, float("inf")).argmin(1)[anchors], negatives


def _every_sample_an_anchor(embeddings, labels):
    """Batch-hard mining that keeps every sample as an anchor, the lone sample of a class included."""
    distances = pairwise_distances(embeddings)
    positive, negative = pair_masks(labels)
    return (torch.arange(len(labels)), distances.masked_fill(~positive, -1).argmax(1),
            distances.masked_fill(~negative, float("inf")).argmin(1))


EXERCISES = {
    "batch_hard": Exercise(
        "02", "pairwise_distances gives all distances; mask with pair_masks (use masked_fill) before argmax / "
        "argmin, and keep as anchors only the samples that have a positive and a negative", _batch_hard,
        _example_batch, (
            Mistake("the closest positive instead of the farthest", lambda inputs: _closest_positives,
                    "closest positive"),
            Mistake("every sample kept as an anchor, even one without a positive",
                    lambda inputs: _every_sample_an_anchor, "has no positive"),
            copied("the notebook's triplets (the library's, already computed), returned for any batch", "batch_hard"),
        )),
}
