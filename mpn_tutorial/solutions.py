"""Reference solutions of the notebooks' "your turn" exercises (try first, then compare).

Each function takes what the exercise's check passes to the learner's code
(:data:`mpn_tutorial.exercises.EXERCISES`) and returns the expected answer. Its docstring says why
it is right: the teachers' answer key (``make answer-key``) shows the code and that explanation in
each notebook's exercise cell.
"""

from __future__ import annotations

import numpy as np
import torch

from mpn_tutorial.losses import pair_masks, pairwise_distances
from mpn_tutorial.metrics import recall_at_k


def first_positive_rank(similarity: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """01: the 1-based rank of each query's first same-class sample.

    Sorting a row by similarity, most similar first, gives the query's ranking (the diagonal is -inf,
    so the query itself comes last). Looking up the labels of the ranked samples and taking the first
    position that holds the query's label gives the rank of its nearest positive; Recall@K is then the
    share of queries whose rank is at most K.
    """
    ranked_labels = labels[similarity.argsort(dim=1, descending=True)]
    return (ranked_labels == labels[:, None]).float().argmax(dim=1) + 1


def batch_hard(embeddings: torch.Tensor, labels: torch.Tensor):
    """02: per anchor with a positive and a negative, its farthest positive and closest negative.

    Masking the distance matrix keeps only the pairs that qualify: positives (same class, not the
    anchor) get -1 elsewhere before argmax, so argmax finds the farthest positive; negatives get +inf
    elsewhere before argmin, so argmin finds the closest negative. Those are the triplets that violate
    the margin most, the "hard" ones of batch-hard mining.
    """
    distances = pairwise_distances(embeddings)
    positive, negative = pair_masks(labels)
    anchors = torch.nonzero(positive.any(1) & negative.any(1)).flatten()
    hardest_positive = distances.masked_fill(~positive, -1).argmax(1)
    hardest_negative = distances.masked_fill(~negative, float("inf")).argmin(1)
    return anchors, hardest_positive[anchors], hardest_negative[anchors]


def zero_logit_softmax(scores: torch.Tensor) -> torch.Tensor:
    """03: the published softmax, with an implicit extra logit of zero.

    A logit of 0 contributes exp(0) = 1 to the denominator and takes no value, so each row is
    exp(s_ij) / (1 + sum_j' exp(s_ij')): the weights a sample gives sum over j (the row, dim=-1) to
    slightly less than one, the rest going to "nothing".
    """
    return scores.exp() / (1 + scores.exp().sum(dim=-1, keepdim=True))


def same_class_share(weights: np.ndarray, labels: np.ndarray) -> float:
    """04: mean over queries of (attention to other same-class samples) / (attention to other samples).

    The diagonal is left out of both sums: a query's attention to itself says nothing about whether
    it finds its class. Dividing by the attention to *all* other samples makes the share independent of
    how much weight the query keeps on itself; chance is (K - 1) / (N - 1).
    """
    same_class = labels[:, None] == labels[None, :]
    others = ~np.eye(len(labels), dtype=bool)
    return float(((weights * (same_class & others)).sum(1) / (weights * others).sum(1)).mean())


def recall_per_epoch(snapshots, labels) -> dict[int, float]:
    """05: Recall@1 of every embedding snapshot.

    Each snapshot is an (epoch, embeddings) pair of the same samples, so the library's leave-one-out
    Recall@1 on each says how well the embedding space retrieves at that point of training.
    """
    return {epoch: recall_at_k(embeddings, labels, ks=(1,))[1] for epoch, embeddings in snapshots}


def welch_t(first, second) -> float:
    """06: Welch's t-statistic of two groups of seeds.

    Welch's t compares the means with each group's own variance (ddof=1, the unbiased estimate from a
    few seeds) over its own size, so it does not assume equal variances or equal sizes, unlike
    Student's pooled t (the two agree only for groups of equal size). It ignores the pairing by seed,
    unlike the paired t of notebook 06.
    """
    x, y = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    return float((x.mean() - y.mean()) / np.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y)))


def training_steps(epochs: int, training_images: int, batch_size: int) -> int:
    """07: optimizer steps of a run: epochs × whole batches per epoch.

    An epoch is as many whole P×K batches as the training images fill (the last partial batch is
    dropped), so the division rounds down per epoch before multiplying by the epochs. The images are
    those of the training classes minus the validation classes carved from them.
    """
    return epochs * (training_images // batch_size)
