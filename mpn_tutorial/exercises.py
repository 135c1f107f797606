"""The notebooks' "your turn" exercises: a check for each, and the feedback a learner sees.

A notebook's exercise cell holds a placeholder (``return None  # your code``); its check cell
calls :func:`check` with the learner's function and what the exercise works on. The feedback is
"not tried yet" (with a hint) while the placeholder is there, "correct" for a right answer, and
otherwise says what is off.

A check calls the learner's function twice: on the notebook's inputs, and on **fresh inputs it draws
itself** (another size, other labels, groups of unequal size), and compares both with the library.
So an answer hard-coded from the notebook's data, or read from a variable the notebook holds,
is not correct: it fits the notebook's batch and not the check's.

Each exercise lists its **common mistakes** (:attr:`Exercise.mistakes`): the tests feed every one
to the check and require "not correct" with the hint given here, and the teachers' answer key
prints them with the feedback the check really gives. The reference solutions are in
:mod:`mpn_tutorial.solutions` (look there after trying).

Feedback is plain text, printed as is under a check cell: it names code as it is written
(``keepdim=True``, ``pair_masks``) and never uses Markdown marks (backticks, asterisks), which a
learner would see as such.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mpn_tutorial.errors import UsageError
from mpn_tutorial.losses import pair_masks, pairwise_distances

WIDTH = 96  # feedback lines are wrapped at word boundaries, never mid-word


@dataclass
class Feedback:
    """The outcome of a check: ``status`` is "not tried", "correct" or "wrong"."""

    exercise: str
    status: str
    message: str

    def __bool__(self) -> bool:
        return self.status == "correct"

    def __repr__(self) -> str:
        mark = {"not tried": "…", "correct": "✔", "wrong": "✘"}[self.status]
        return textwrap.fill(f"{mark} {self.exercise}: {self.status}. {self.message}", WIDTH, subsequent_indent="  ",
                             break_long_words=False, break_on_hyphens=False)


class _NotTried(Exception):
    """The answer is still the placeholder."""


_RETURNED: list = []  # what the learner's function returned in the current check, call by call


def _evaluated(answer, *arguments):
    """What the learner's function returns for ``arguments`` (recorded in ``_RETURNED``)."""
    if answer is None:
        raise _NotTried
    if not callable(answer):
        raise AssertionError("write a function, not a value: the check calls it on inputs of its own too, so a "
                             "result copied from the notebook cannot be right")
    try:
        value = answer(*arguments)
    except NotImplementedError:
        raise _NotTried from None
    if value is None:
        raise _NotTried
    _RETURNED.append(value)
    return value


def _same(first, second) -> bool:
    """Whether two answers are the same value (numbers, arrays, tensors, dicts or tuples of them)."""
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(_same(first[key], second[key]) for key in first)
    if isinstance(first, (tuple, list)) and isinstance(second, (tuple, list)):
        return len(first) == len(second) and all(_same(a, b) for a, b in zip(first, second))
    try:
        a, b = np.asarray(_plain(first), dtype=np.float64), np.asarray(_plain(second), dtype=np.float64)
    except (TypeError, ValueError):
        return first is second
    return a.shape == b.shape and np.array_equal(a, b)


def _plain(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


def _on_fresh_inputs(compare: Callable[[], None], what: str) -> None:
    """Run a comparison on the check's own inputs; a failure there (after the notebook's passed) means the
    answer fits the notebook's data only."""
    try:
        compare()
    except AssertionError as error:
        if len(_RETURNED) >= 2 and _same(_RETURNED[0], _RETURNED[-1]):
            raise AssertionError(f"your function returns the notebook's answer for {what} that the check drew too: "
                                 "compute the answer from the function's arguments, not from the notebook's "
                                 "variables or numbers") from None
        raise AssertionError(f"right for the notebook's inputs, but not for {what} that the check drew: "
                             f"{error}") from None


def _as_array(value, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise AssertionError(f"{name} should be numbers (a tensor or an array), got {type(value).__name__}") from None


def _same_shape(yours: np.ndarray, expected: np.ndarray, name: str) -> None:
    if yours.shape != expected.shape:
        raise AssertionError(f"{name} should have shape {expected.shape}, yours has {yours.shape}")


def _generator(seed: int = 2024) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# 01: the rank of each query's first positive
# ---------------------------------------------------------------------------------------------


def _ranks_expected(embeddings: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """The library's ranking (``metrics.nearest_neighbours``): the 1-based position of each query's first positive."""
    from mpn_tutorial.metrics import nearest_neighbours

    ranked = nearest_neighbours(embeddings, len(labels) - 1)
    return ((labels[ranked] == labels[:, None]).float().argmax(dim=1) + 1).numpy().astype(np.float64)


def _similarity(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarities with -inf on the diagonal (a query never retrieves itself), as notebook 01 builds them."""
    embeddings = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=1)
    similarity = embeddings @ embeddings.T
    return similarity.fill_diagonal_(-float("inf"))


def _compare_ranks(answer, similarity, labels, embeddings) -> np.ndarray:
    ranks = _as_array(_evaluated(answer, similarity, labels), "the ranks")
    expected = _ranks_expected(embeddings, labels)
    _same_shape(ranks, expected, "the ranks (one per query)")
    if ranks.min() < 1:
        raise AssertionError("ranks are 1-based: the first position is rank 1, not 0")
    if not np.array_equal(ranks, expected):
        query = int(np.flatnonzero(ranks != expected)[0])
        raise AssertionError(f"query {query}: rank {ranks[query]:.0f} instead of {expected[query]:.0f}. Rank by "
                             "similarity, most similar first, and find the first position whose label is the query's")
    return ranks


def _first_positive_rank(answer, similarity, labels, embeddings) -> str:
    ranks = _compare_ranks(answer, similarity, labels, embeddings)
    fresh, fresh_labels = torch.randn(10, 4, generator=_generator()), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    _on_fresh_inputs(lambda: _compare_ranks(answer, _similarity(fresh), fresh_labels, fresh),
                     "10 random embeddings of 3 classes")
    return f"ranks {ranks.astype(int).tolist()}, as the library ranks (and on a batch of the check's own)"


# ---------------------------------------------------------------------------------------------
# 02: batch-hard mining
# ---------------------------------------------------------------------------------------------


def _compare_batch_hard(answer, embeddings, labels) -> int:
    from mpn_tutorial.losses import TripletLoss

    yours = _evaluated(answer, embeddings, labels)
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
    # a P×K batch always has positives; this one also holds a sample alone in its class (label 4), which is
    # no anchor: it has a negative but no positive
    fresh, fresh_labels = torch.randn(13, 6, generator=_generator()), torch.tensor([0, 0, 0, 1, 1, 1, 4, 2, 2, 2,
                                                                                  3, 3, 3])
    _on_fresh_inputs(lambda: _compare_batch_hard(answer, fresh, fresh_labels),
                     "a batch of 4 classes × 3 and one sample alone in its class")
    return f"your batch-hard mining picks the library's {count} triplets (and on a batch of the check's own)"


# ---------------------------------------------------------------------------------------------
# 03: the published (zero-logit) softmax
# ---------------------------------------------------------------------------------------------


def _compare_zero_logit(answer, scores, expected) -> np.ndarray:
    yours = _as_array(_evaluated(answer, scores), "the weights")
    expected = _as_array(expected, "the reference")
    _same_shape(yours, expected, "the weights")
    exponentials = torch.as_tensor(scores, dtype=torch.float64).exp()
    if np.allclose(yours, torch.softmax(torch.as_tensor(scores, dtype=torch.float64), dim=-1).numpy(), atol=1e-6):
        raise AssertionError("that is the standard softmax; the published one adds exp(0) = 1 to each denominator")
    if np.allclose(yours, (exponentials / (1 + exponentials.sum(dim=0, keepdim=True))).numpy(), atol=1e-6):
        raise AssertionError("you summed each column (dim=0): the weights sample i gives are normalised over the "
                             "samples j it attends to, so sum each row (dim=-1, keepdim=True)")
    if np.allclose(yours, (exponentials / (1 + exponentials.sum(dim=-1))).numpy(), atol=1e-6):
        raise AssertionError("the row sums lost their dimension: without keepdim=True, sum(dim=-1) has shape (N,) and "
                             "broadcasts like a row (1, N), so weight (i, j) is divided by row j's sum instead of "
                             "row i's. Sum with keepdim=True, shape (N, 1)")
    if not np.allclose(yours, expected, atol=1e-6):
        raise AssertionError("your weights differ from MessagePassingLayer(zero_logit=True)'s")
    return yours


def _zero_logit_softmax(answer, scores, reference) -> str:
    from mpn_tutorial.models import attention_weights

    yours = _compare_zero_logit(answer, scores, reference)
    q, k = torch.randn(2, 7, 4, generator=_generator()) * 2
    _on_fresh_inputs(lambda: _compare_zero_logit(answer, q @ k.T / 2, attention_weights(q, k, zero_logit=True)),
                     "the scores of 7 random queries and keys")
    sums = yours.sum(axis=-1)
    return f"rows now sum to {sums.min():.3f} … {sums.max():.3f}, below 1 (and for scores of the check's own)"


# ---------------------------------------------------------------------------------------------
# 04: the same-class share of one head
# ---------------------------------------------------------------------------------------------


def _compare_share(answer, weights, labels) -> float:
    from mpn_tutorial.metrics import same_class_attention_share

    yours = float(np.asarray(_evaluated(answer, weights, labels), dtype=np.float64))
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
    _on_fresh_inputs(lambda: _compare_share(answer, fresh / fresh.sum(1, keepdims=True), fresh_labels),
                     "a 9-sample head with classes of 3, 2 and 4")
    return f"this head keeps {100 * yours:.0f}% of its attention to others within the class"


# ---------------------------------------------------------------------------------------------
# 05: Recall@1 of every snapshot
# ---------------------------------------------------------------------------------------------


def _compare_recalls(answer, snapshots, labels) -> dict:
    from mpn_tutorial.metrics import recall_at_k

    yours = _evaluated(answer, snapshots, labels)
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
    _on_fresh_inputs(lambda: _compare_recalls(answer, fresh, fresh_labels), "three snapshots of 12 random embeddings")
    first, last = min(expected), max(expected)
    return (f"Recall@1 of the subset goes from {100 * expected[first]:.0f}% (epoch {first}) to "
            f"{100 * expected[last]:.0f}% (epoch {last})")


# ---------------------------------------------------------------------------------------------
# 06: Welch's t
# ---------------------------------------------------------------------------------------------


def _compare_welch(answer, first, second) -> float:
    from scipy.stats import ttest_ind, ttest_rel

    yours = float(_evaluated(answer, list(first), list(second)))
    expected = float(ttest_ind(first, second, equal_var=False).statistic)
    biased = (np.mean(first) - np.mean(second)) / np.sqrt(np.var(first) / len(first) + np.var(second) / len(second))
    if abs(yours - biased) < 1e-6 and abs(biased - expected) > 1e-6:
        raise AssertionError("use the sample variance (ddof=1), the unbiased estimate from a few seeds")
    if len(first) == len(second) and abs(yours - float(ttest_rel(first, second).statistic)) < 1e-6:
        raise AssertionError("that is the paired t (the differences seed by seed); Welch's t compares the two "
                             "groups as a whole: (mean_a - mean_b) / sqrt(var_a / n_a + var_b / n_b)")
    pooled = float(ttest_ind(first, second, equal_var=True).statistic)
    if abs(yours - pooled) < 1e-6 and abs(pooled - expected) > 1e-6:
        raise AssertionError("that is Student's pooled t (equal_var=True); it equals Welch's t only for groups of "
                             "equal size. Welch divides by sqrt(var_a / n_a + var_b / n_b)")
    if abs(yours - expected) > 1e-6:
        raise AssertionError(f"t = {yours:.3f} but Welch's t is {expected:.3f}: (mean difference) / "
                             "sqrt(var_a / n_a + var_b / n_b)")
    return yours


def _welch_t(answer, first, second) -> str:
    yours = _compare_welch(answer, first, second)
    # unequal sizes and spreads: Student's pooled t differs from Welch's here
    _on_fresh_inputs(lambda: _compare_welch(answer, [0.61, 0.64, 0.58, 0.66], [0.50, 0.59, 0.41, 0.62, 0.47, 0.55,
                                                                              0.38]),
                     "groups of 4 and 7 seeds")
    return f"t = {yours:+.2f}"


# ---------------------------------------------------------------------------------------------
# 07: the optimizer steps of the full recipe
# ---------------------------------------------------------------------------------------------

# CUB-200-2011's training classes hold 5,864 images; with 10 of the 100 classes held out for validation,
# about 5,280 train the model (the figure notebook 07 gives). The check uses these, never the learner's variables.
CUB_TRAINING_IMAGES, CUB_IMAGES_BEFORE_VALIDATION = 5280, 5864


def _compare_steps(answer, epochs, training_images, batch_size) -> int:
    yours = _evaluated(answer, epochs, training_images, batch_size)
    expected = epochs * (training_images // batch_size)
    if training_images == CUB_TRAINING_IMAGES and yours in (epochs * (CUB_IMAGES_BEFORE_VALIDATION // batch_size),
                                                            epochs * CUB_IMAGES_BEFORE_VALIDATION // batch_size):
        raise AssertionError(f"that counts all {CUB_IMAGES_BEFORE_VALIDATION:,} images of the training classes; the "
                             f"validation classes are held out, so about {CUB_TRAINING_IMAGES:,} remain")
    if yours == epochs * training_images // batch_size and yours != expected:
        raise AssertionError("an epoch has a whole number of batches: round down per epoch, then multiply")
    if yours != expected:
        raise AssertionError(f"{yours} instead of {expected}: epochs × (training images // images per batch)")
    return expected


def _training_steps(answer, epochs, batch_size) -> str:
    expected = _compare_steps(answer, epochs, CUB_TRAINING_IMAGES, batch_size)
    _on_fresh_inputs(lambda: _compare_steps(answer, 3, 1000, 48), "3 epochs of 1,000 images in batches of 48")
    return f"{expected:,} optimizer steps of {batch_size} images"


# ---------------------------------------------------------------------------------------------
# The exercises, their hints and their common mistakes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mistake:
    """A common mistake: what it is, a function of an exercise's inputs that builds the mistaken answer,
    and the words the check's feedback gives for it."""

    what: str
    answer: Callable
    says: str


def _constant(value):
    """An answer that ignores its arguments and returns ``value`` (a copy of the notebook's result)."""
    return lambda *arguments: value


@dataclass(frozen=True)
class Exercise:
    notebook: str
    hint: str
    check: Callable[..., str]
    example: Callable[[], tuple]  # inputs like the notebook's, for the tests and the answer key
    mistakes: tuple[Mistake, ...]


def _example_ranks():
    toy = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [0.9, 0.3], [0.0, 1.0], [0.2, 0.9], [-1.0, 0.1], [-0.2, -1.0], [0.7, -0.7]]), dim=1)
    return _similarity(toy), torch.tensor([0, 0, 1, 1, 2, 2, 0]), toy


def _example_batch():
    return torch.randn(24, 8, generator=_generator(0)), torch.arange(6).repeat_interleave(4)


def _example_scores():
    from mpn_tutorial.models import attention_weights

    q, k = torch.randn(2, 6, 8, generator=_generator(0))
    return q @ k.T / np.sqrt(8), attention_weights(q, k, zero_logit=True)


def _example_head():
    generator = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 3)
    weights = generator.random((12, 12)) + 2.0 * (labels[:, None] == labels[None, :])
    return weights / weights.sum(1, keepdims=True), labels


def _example_snapshots():
    generator = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 4)
    centres = generator.normal(size=(5, 6))
    return [(epoch, centres[labels] * epoch + generator.normal(size=(20, 6))) for epoch in range(3)], labels


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


def _solved(name):
    """The reference solution's answer on the example inputs (what a copy of the notebook's result would be)."""
    def build(inputs):
        from mpn_tutorial import solutions

        arguments = {"first_positive_rank": inputs[:2], "training_steps": (inputs[0], CUB_TRAINING_IMAGES,
                                                                          inputs[1])}.get(name, inputs)
        return getattr(solutions, name)(*arguments)
    return build


EXERCISES: dict[str, Exercise] = {
    "first_positive_rank": Exercise(
        "01", "sort each row of similarity (descending), look up the labels of the ranked samples, and find the "
        "first position holding the query's label", _first_positive_rank, _example_ranks, (
            Mistake("0-based ranks", lambda inputs: lambda s, y: _solved("first_positive_rank")((s, y)) - 1,
                    "1-based"),
            Mistake("the ranks copied from the notebook's output",
                    lambda inputs: _solved("first_positive_rank")(inputs), "write a function"),
            Mistake("a function that returns the notebook's ranks whatever its arguments",
                    lambda inputs: _constant(_solved("first_positive_rank")(inputs)), "returns the notebook's answer"),
        )),
    "batch_hard": Exercise(
        "02", "pairwise_distances gives all distances; mask with pair_masks (use masked_fill) before argmax / "
        "argmin, and keep as anchors only the samples that have a positive and a negative", _batch_hard,
        _example_batch, (
            Mistake("the closest positive instead of the farthest", lambda inputs: _closest_positives,
                    "closest positive"),
            Mistake("every sample kept as an anchor, even one without a positive",
                    lambda inputs: _every_sample_an_anchor, "has no positive"),
            Mistake("the notebook's triplets (the library's, already computed), returned for any batch",
                    lambda inputs: _constant(_solved("batch_hard")(inputs)), "returns the notebook's answer"),
        )),
    "zero_logit_softmax": Exercise(
        "03", "exponentiate the scores and divide by 1 + the row sums", _zero_logit_softmax, _example_scores, (
            Mistake("the standard softmax", lambda inputs: lambda s: torch.softmax(s, dim=-1), "standard softmax"),
            Mistake("normalising each column (dim=0)",
                    lambda inputs: lambda s: s.exp() / (1 + s.exp().sum(dim=0, keepdim=True)), "each row"),
            Mistake("summing each row without keepdim=True",
                    lambda inputs: lambda s: s.exp() / (1 + s.exp().sum(dim=-1)), "keepdim=True"),
            Mistake("returning the check's own reference (the layer's weights in the notebook)",
                    lambda inputs: _constant(inputs[1]), "returns the notebook's answer"),
        )),
    "same_class_share": Exercise(
        "04", "build a same-class mask and an 'other sample' mask (not the diagonal)", _same_class_share,
        _example_head, (
            Mistake("counting the query's attention to itself",
                    lambda inputs: lambda w, y: float((w * (y[:, None] == y[None, :])).sum(1).mean()), "itself"),
            Mistake("returning the share the notebook printed",
                    lambda inputs: _constant(_solved("same_class_share")(inputs)), "returns the notebook's answer"),
        )),
    "recall_per_epoch": Exercise(
        "05", "loop over snapshots (epoch, embeddings) and call recall_at_k", _recall_per_epoch, _example_snapshots,
        (
            Mistake("one value for every epoch", lambda inputs: lambda s, y: {epoch: 0.5 for epoch, _ in s},
                    "instead of"),
            Mistake("only one epoch", lambda inputs: lambda s, y: {0: 0.5}, "one entry per snapshot"),
            Mistake("the notebook's recalls, returned for any snapshots",
                    lambda inputs: _constant(_solved("recall_per_epoch")(inputs)), "returns the notebook's answer"),
        )),
    "welch_t": Exercise(
        "06", "difference of the means over sqrt(var_a / n_a + var_b / n_b), with ddof=1", _welch_t,
        lambda: ([0.40, 0.44, 0.38], [0.35, 0.37, 0.30]), (
            Mistake("the biased variance (ddof=0)", lambda inputs: lambda a, b: float(
                (np.mean(a) - np.mean(b)) / np.sqrt(np.var(a) / len(a) + np.var(b) / len(b))), "ddof=1"),
            Mistake("the paired t", lambda inputs: _scipy_test("ttest_rel"), "paired t"),
            Mistake("Student's pooled t (equal_var=True), equal to Welch's for groups of equal size",
                    lambda inputs: _scipy_test("ttest_ind", equal_var=True), "pooled t"),
            Mistake("the t the notebook printed, returned for any groups",
                    lambda inputs: _constant(_solved("welch_t")(inputs)), "returns the notebook's answer"),
        )),
    "training_steps": Exercise(
        "07", "an epoch is len(train) // (P·K) batches, of the 5,280 images that train the model", _training_steps,
        lambda: (70, 54), (
            Mistake("rounding once for the whole run", lambda inputs: lambda e, n, b: e * n // b,
                    "round down per epoch"),
            Mistake("counting the validation classes' images too", lambda inputs: lambda e, n, b: e * (5864 // b),
                    "5,864"),
            Mistake("the notebook's number, returned for any run", lambda inputs: _constant(6790),
                    "returns the notebook's answer"),
        )),
}


def _scipy_test(name: str, **options):
    def statistic(first, second):
        from scipy import stats

        return float(getattr(stats, name)(first, second, **options).statistic)
    return statistic


def check(exercise: str, answer, *inputs) -> Feedback:
    """Check a learner's function for ``exercise`` on the notebook's ``inputs`` and on the check's own."""
    if exercise not in EXERCISES:
        raise UsageError(f"unknown exercise {exercise!r}; the exercises are {', '.join(EXERCISES)}")
    entry = EXERCISES[exercise]
    _RETURNED.clear()
    try:
        message = entry.check(answer, *inputs)
    except _NotTried:
        return Feedback(exercise, "not tried", f"Replace the placeholder with your code. Hint: {entry.hint}.")
    except AssertionError as error:
        return Feedback(exercise, "wrong", str(error))
    except Exception as error:  # the learner's code failed: say how, never crash the check cell
        return Feedback(exercise, "wrong", f"your code raised {type(error).__name__}: {error}")
    return Feedback(exercise, "correct", message)


def common_mistakes(exercise: str) -> list[tuple[str, Feedback]]:
    """Each common mistake of ``exercise`` with the feedback the check gives it on the example inputs."""
    entry = EXERCISES[exercise]
    inputs = entry.example()
    return [(mistake.what, check(exercise, mistake.answer(inputs), *inputs)) for mistake in entry.mistakes]
