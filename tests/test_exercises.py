"""Every exercise's check accepts the reference solution, rejects a plausible wrong answer with a
message, and says "not tried" for the placeholder."""

import numpy as np
import pytest
import torch
from scipy.stats import ttest_rel

from mpn_tutorial import solutions
from mpn_tutorial.exercises import EXERCISES, check
from mpn_tutorial.losses import pair_masks, pairwise_distances
from mpn_tutorial.models import MessagePassingLayer


def _toy():
    toy = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [0.9, 0.3], [0.0, 1.0], [0.2, 0.9], [-1.0, 0.1], [-0.2, -1.0], [0.7, -0.7]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0])
    similarity = toy @ toy.T
    similarity.fill_diagonal_(-float("inf"))
    return similarity, labels, toy


def _embeddings():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(24, 8, generator=generator), torch.arange(6).repeat_interleave(4)


def _attention():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 3)
    weights = rng.random((12, 12)) + 2.0 * (labels[:, None] == labels[None, :])
    return weights / weights.sum(1, keepdims=True), labels


def _scores_and_reference():
    torch.manual_seed(0)
    layer = MessagePassingLayer(8, 1, ff_dim=16, dropout=0.0, zero_logit=True).eval()
    x = torch.randn(6, 8)
    q, k = layer.q_proj(x), layer.k_proj(x)
    with torch.no_grad():
        scores = q @ k.T / np.sqrt(8)
        _, attention = layer(x, return_attention=True)
    return scores.detach(), attention[0]


def _snapshots():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 4)
    centres = rng.normal(size=(5, 6))
    return [(epoch, centres[labels] * epoch + rng.normal(size=(20, 6))) for epoch in range(3)], labels


def _seeds():
    return [0.40, 0.44, 0.38], [0.35, 0.37, 0.30]


def _closest_positives(embeddings, labels):
    anchors, _, negatives = solutions.batch_hard(embeddings, labels)
    distances = pairwise_distances(embeddings)
    positive, _ = pair_masks(labels)
    return anchors, distances.masked_fill(~positive, float("inf")).argmin(1)[anchors], negatives


# exercise -> (inputs, the reference answer, [(a plausible wrong answer, what its feedback must say)])
def _cases():
    similarity, labels, toy = _toy()
    embeddings, pk_labels = _embeddings()
    weights, attention_labels = _attention()
    scores, reference = _scores_and_reference()
    snapshots, snapshot_labels = _snapshots()
    first, second = _seeds()
    return {
        "first_positive_rank": ((similarity, labels, toy), solutions.first_positive_rank, [
            (lambda s, y: solutions.first_positive_rank(s, y) - 1, "1-based")]),
        "batch_hard": ((embeddings, pk_labels), solutions.batch_hard, [
            (_closest_positives, "closest positive")]),
        "zero_logit_softmax": ((scores, reference), solutions.zero_logit_softmax, [
            (lambda s: torch.softmax(s, dim=-1), "standard softmax"),
            (lambda s: s.exp() / (1 + s.exp().sum(dim=0, keepdim=True)), "each row")]),
        "same_class_share": ((weights, attention_labels), solutions.same_class_share, [
            (lambda w, y: float((w * (y[:, None] == y[None, :])).sum(1).mean()), "itself")]),
        "recall_per_epoch": ((snapshots, snapshot_labels), solutions.recall_per_epoch, [
            (lambda s, y: {epoch: 0.5 for epoch, _ in s}, "instead of"),
            (lambda s, y: {0: 0.5}, "one entry per snapshot")]),
        "welch_t": ((first, second), solutions.welch_t, [
            (lambda a, b: float((np.mean(a) - np.mean(b)) / np.sqrt((np.var(a) + np.var(b)) / len(a))), "ddof=1"),
            (lambda a, b: float(ttest_rel(a, b).statistic), "paired t")]),
        "training_steps": ((70, 54), solutions.training_steps(70, 5280, 54), [
            (70 * 5280 // 54, "round down per epoch"),
            (70 * (5864 // 54), "5,864")]),
    }


CASES = _cases()


def test_every_exercise_has_a_case():
    assert set(CASES) == set(EXERCISES)


@pytest.mark.parametrize("exercise", sorted(CASES))
def test_the_reference_solution_is_accepted(exercise):
    inputs, solution, _ = CASES[exercise]
    feedback = check(exercise, solution, *inputs)
    assert feedback.status == "correct", feedback


WRONG = [(exercise, index) for exercise, (_, _, wrongs) in sorted(CASES.items()) for index in range(len(wrongs))]


@pytest.mark.parametrize("exercise, index", WRONG, ids=[f"{e}-{i}" for e, i in WRONG])
def test_each_plausible_wrong_answer_gets_its_own_hint(exercise, index):
    inputs, _, wrongs = CASES[exercise]
    wrong, says = wrongs[index]
    feedback = check(exercise, wrong, *inputs)
    assert feedback.status == "wrong" and says in feedback.message, feedback


@pytest.mark.parametrize("exercise", sorted(CASES))
def test_the_placeholder_says_not_tried_with_a_hint(exercise):
    inputs, _, _ = CASES[exercise]
    feedback = check(exercise, None, *inputs)
    assert feedback.status == "not tried" and "Hint" in feedback.message
    assert check(exercise, lambda *args: None, *inputs).status == "not tried"


def test_a_crashing_answer_is_reported_not_raised():
    inputs, _, _ = CASES["batch_hard"]
    feedback = check("batch_hard", lambda e, y: e[100], *inputs)
    assert feedback.status == "wrong" and "IndexError" in feedback.message
