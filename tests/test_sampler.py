from collections import Counter

import numpy as np
import pytest

from mpn_tutorial.data import PKSampler

LABELS = np.repeat(np.arange(10), [6, 6, 6, 6, 6, 6, 6, 6, 3, 1])


def test_every_batch_has_exactly_p_classes_with_k_samples_each():
    sampler = PKSampler(LABELS, classes_per_batch=4, samples_per_class=3, seed=0, num_batches=50)
    for batch in sampler:
        counts = Counter(LABELS[batch].tolist())
        assert len(batch) == 12
        assert len(counts) == 4 and set(counts.values()) == {3}


def test_batches_are_grouped_by_class():
    batch = next(iter(PKSampler(LABELS, 4, 3, seed=1)))
    labels = LABELS[batch].reshape(4, 3)
    assert (labels == labels[:, :1]).all()


def test_classes_with_at_least_k_samples_give_distinct_samples():
    for batch in PKSampler(LABELS, 4, 5, seed=0, num_batches=40):
        for label in set(LABELS[batch].tolist()) - {8, 9}:
            chosen = [i for i in batch if LABELS[i] == label]
            assert len(set(chosen)) == 5


def test_classes_with_fewer_than_k_samples_are_drawn_with_replacement():
    seen_small_class = False
    for batch in PKSampler(LABELS, 4, 3, seed=0, num_batches=40):
        chosen = [i for i in batch if LABELS[i] == 9]
        if chosen:
            seen_small_class = True
            assert chosen == [chosen[0]] * 3  # its single sample, three times
    assert seen_small_class


def test_default_epoch_length_covers_the_dataset_once():
    sampler = PKSampler(LABELS, 2, 3, seed=0)
    assert len(sampler) == len(LABELS) // 6 == len(list(sampler))


def test_batches_depend_only_on_seed_and_epoch():
    first, second = PKSampler(LABELS, 4, 3, seed=7), PKSampler(LABELS, 4, 3, seed=7)
    second.set_epoch(3)
    second.set_epoch(0)
    assert list(first) == list(second)
    second.set_epoch(1)
    assert list(first) != list(second)


def test_classes_are_used_about_equally_often():
    sampler = PKSampler(LABELS, 4, 2, seed=0, num_batches=250)  # 1000 class draws over 10 classes
    usage = Counter(label for batch in sampler for label in set(LABELS[batch].tolist()))
    assert len(usage) == 10
    assert max(usage.values()) - min(usage.values()) <= 10


def test_too_few_classes_gets_a_clear_error():
    with pytest.raises(ValueError, match="only 10 classes"):
        PKSampler(LABELS, classes_per_batch=11, samples_per_class=2)


def test_batches_without_positives_or_negatives_are_refused():
    with pytest.raises(ValueError, match="at least 2 classes"):
        PKSampler(LABELS, classes_per_batch=4, samples_per_class=1)
