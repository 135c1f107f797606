"""The notebooks' "your turn" exercises: a check for each, and the feedback a learner sees.

A notebook's exercise cell holds a placeholder (``return None  # your code``); its check cell
calls :func:`check` with the learner's answer and what the exercise works on. The feedback is
"not tried yet" (with a hint) while the placeholder is there, "correct" for a right answer, and
otherwise says what is off. The reference solutions are in :mod:`mpn_tutorial.solutions` (look
there after trying); the tests run every check against its solution and against a wrong answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mpn_tutorial.errors import UsageError
from mpn_tutorial.losses import pair_masks, pairwise_distances


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
        return f"{mark} {self.exercise}: {self.status}. {self.message}"


class _NotTried(Exception):
    """The answer is still the placeholder."""


def _evaluated(answer, *arguments):
    """The learner's value: the answer itself, or what the learner's function returns."""
    if answer is None:
        raise _NotTried
    if callable(answer):
        try:
            value = answer(*arguments)
        except NotImplementedError:
            raise _NotTried from None
        if value is None:
            raise _NotTried
        return value
    return answer


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


# ---------------------------------------------------------------------------------------------
# The exercises. Each check gets the learner's answer and the exercise's inputs, and raises
# AssertionError with what is off. The expected value always comes from the library.
# ---------------------------------------------------------------------------------------------


def _first_positive_rank(answer, similarity, labels, embeddings) -> str:
    from mpn_tutorial.metrics import recall_at_k

    ranks = _as_array(_evaluated(answer, similarity, labels), "the ranks")
    _same_shape(ranks, np.asarray(labels), "the ranks (one per query)")
    if ranks.min() < 1:
        raise AssertionError("ranks are 1-based: the first position is rank 1, not 0")
    for k in (1, 2, 3):
        expected = recall_at_k(embeddings, labels, ks=(k,))[k]
        if abs((ranks <= k).mean() - expected) > 1e-6:
            raise AssertionError(f"the share of ranks <= {k} is {(ranks <= k).mean():.3f}, but Recall@{k} is "
                                 f"{expected:.3f}: rank by similarity, most similar first, and find the first "
                                 "position whose label is the query's")
    return f"ranks {ranks.astype(int).tolist()} give the library's Recall@1, @2 and @3"


def _batch_hard(answer, embeddings, labels) -> str:
    from mpn_tutorial.losses import TripletLoss

    yours = _evaluated(answer, embeddings, labels)
    expected = TripletLoss(mining="hard").mine(embeddings, labels)
    if not isinstance(yours, (tuple, list)) or len(yours) != 3:
        raise AssertionError("return three index tensors: (anchors, hardest positives, hardest negatives)")
    distances = pairwise_distances(embeddings)
    positive, negative = pair_masks(labels)
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
    return f"your batch-hard mining picks the library's {len(expected[0])} triplets"


def _zero_logit_softmax(answer, scores, reference) -> str:
    yours = _as_array(_evaluated(answer, scores), "the weights")
    expected = _as_array(reference, "the reference")
    _same_shape(yours, expected, "the weights")
    exponentials = torch.as_tensor(scores, dtype=torch.float64).exp()
    if np.allclose(yours, torch.softmax(torch.as_tensor(scores), dim=-1).numpy(), atol=1e-6):
        raise AssertionError("that is the standard softmax; the published one adds exp(0) = 1 to each denominator")
    if np.allclose(yours, (exponentials / (1 + exponentials.sum(dim=0, keepdim=True))).numpy(), atol=1e-6):
        raise AssertionError("you summed each column (dim=0): the weights sample i gives are normalised over the "
                             "samples j it attends to, so sum each row (dim=-1, keepdim=True)")
    if not np.allclose(yours, expected, atol=1e-6):
        raise AssertionError("your weights differ from MessagePassingLayer(zero_logit=True)'s")
    sums = yours.sum(axis=-1)
    return f"rows now sum to {sums.min():.3f} … {sums.max():.3f}, below 1"


def _same_class_share(answer, weights, labels) -> str:
    from mpn_tutorial.metrics import same_class_attention_share

    yours = float(np.asarray(_evaluated(answer, weights, labels), dtype=np.float64))
    expected = float(same_class_attention_share(np.asarray(weights)[None], labels)[0])
    with_self = float(np.mean((np.asarray(weights) * (np.asarray(labels)[:, None] == np.asarray(labels))).sum(1)))
    if abs(yours - with_self) < 1e-6 and abs(with_self - expected) > 1e-6:
        raise AssertionError("that counts the query's attention to itself; use only the attention to *other* samples")
    if abs(yours - expected) > 1e-6:
        raise AssertionError(f"you get {yours:.4f}, the library {expected:.4f}: per query, divide the attention to "
                             "other samples of its class by the attention to all other samples, then average")
    return f"this head keeps {100 * yours:.0f}% of its attention to others within the class"


def _recall_per_epoch(answer, snapshots, labels) -> str:
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
    first, last = min(expected), max(expected)
    return (f"Recall@1 of the subset goes from {100 * expected[first]:.0f}% (epoch {first}) to "
            f"{100 * expected[last]:.0f}% (epoch {last})")


def _welch_t(answer, first, second) -> str:
    from scipy.stats import ttest_ind, ttest_rel

    yours = float(_evaluated(answer, first, second))
    expected = float(ttest_ind(first, second, equal_var=False).statistic)
    pooled_like = (np.mean(first) - np.mean(second)) / np.sqrt((np.var(first) + np.var(second)) / len(first))
    if abs(yours - pooled_like) < 1e-6 and abs(pooled_like - expected) > 1e-6:
        raise AssertionError("use the sample variance (ddof=1), the unbiased estimate from a few seeds")
    if len(first) == len(second) and abs(yours - float(ttest_rel(first, second).statistic)) < 1e-6:
        raise AssertionError("that is the paired t (the differences seed by seed); Welch's t compares the two "
                             "groups as a whole: (mean_a - mean_b) / sqrt(var_a / n_a + var_b / n_b)")
    if abs(yours - expected) > 1e-6:
        raise AssertionError(f"t = {yours:.3f} but Welch's t is {expected:.3f}: (mean difference) / "
                             "sqrt(var_a / n_a + var_b / n_b)")
    return f"t = {yours:+.2f}"


# CUB-200-2011's training classes hold 5,864 images; with 10 of the 100 classes held out for validation,
# about 5,280 train the model (the figure notebook 07 gives). The check uses these, never the learner's variables.
CUB_TRAINING_IMAGES, CUB_IMAGES_BEFORE_VALIDATION = 5280, 5864


def _training_steps(answer, epochs, batch_size) -> str:
    yours = _evaluated(answer, epochs, CUB_TRAINING_IMAGES, batch_size)
    expected = epochs * (CUB_TRAINING_IMAGES // batch_size)
    if yours in (epochs * (CUB_IMAGES_BEFORE_VALIDATION // batch_size),
                 epochs * CUB_IMAGES_BEFORE_VALIDATION // batch_size):
        raise AssertionError(f"that counts all {CUB_IMAGES_BEFORE_VALIDATION:,} images of the training classes; the "
                             f"validation classes are held out, so about {CUB_TRAINING_IMAGES:,} remain")
    if yours == epochs * CUB_TRAINING_IMAGES // batch_size and yours != expected:
        raise AssertionError("an epoch has a whole number of batches: round down per epoch, then multiply")
    if yours != expected:
        raise AssertionError(f"{yours} instead of {expected}: epochs × (training images // images per batch)")
    return f"{expected:,} optimizer steps of {batch_size} images"


@dataclass(frozen=True)
class Exercise:
    notebook: str
    hint: str
    check: Callable[..., str]


EXERCISES: dict[str, Exercise] = {
    "first_positive_rank": Exercise("01", "sort each row of `similarity` (descending), look up the labels of the "
                                    "ranked samples, and find the first position holding the query's label",
                                    _first_positive_rank),
    "batch_hard": Exercise("02", "`pairwise_distances` gives all distances; mask with `pair_masks` (use "
                           "masked_fill) before argmax / argmin", _batch_hard),
    "zero_logit_softmax": Exercise("03", "exponentiate the scores and divide by 1 + the row sums", _zero_logit_softmax),
    "same_class_share": Exercise("04", "build a same-class mask and an 'other sample' mask (not the diagonal)",
                                 _same_class_share),
    "recall_per_epoch": Exercise("05", "loop over `snapshots` (epoch, embeddings) and call recall_at_k",
                                 _recall_per_epoch),
    "welch_t": Exercise("06", "difference of the means over sqrt(var_a / n_a + var_b / n_b), with ddof=1", _welch_t),
    "training_steps": Exercise("07", "an epoch is len(train) // (P·K) batches, of the 5,280 images that train the "
                               "model", _training_steps),
}


def check(exercise: str, answer, *inputs) -> Feedback:
    """Check a learner's answer to ``exercise`` (a value, or a function called with ``inputs``)."""
    if exercise not in EXERCISES:
        raise UsageError(f"unknown exercise {exercise!r}; the exercises are {', '.join(EXERCISES)}")
    entry = EXERCISES[exercise]
    try:
        message = entry.check(answer, *inputs)
    except _NotTried:
        return Feedback(exercise, "not tried", f"Replace the placeholder with your code. Hint: {entry.hint}.")
    except AssertionError as error:
        return Feedback(exercise, "wrong", str(error))
    except Exception as error:  # the learner's code failed: say how, never crash the check cell
        return Feedback(exercise, "wrong", f"your code raised {type(error).__name__}: {error}")
    return Feedback(exercise, "correct", message)
