"""Reference solutions of the notebooks' "your turn" exercises (try first, then compare).

Each function takes what the exercise's check passes to the learner's code
(:data:`mpn_tutorial.exercises.EXERCISES`) and returns the expected answer.
"""

from __future__ import annotations

import numpy as np
import torch

from mpn_tutorial.losses import pair_masks, pairwise_distances
from mpn_tutorial.metrics import recall_at_k


def first_positive_rank(similarity: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """01: the 1-based rank of each query's first same-class sample (the diagonal is -inf)."""
    ranked_labels = labels[similarity.argsort(dim=1, descending=True)]
    return (ranked_labels == labels[:, None]).float().argmax(dim=1) + 1


def batch_hard(embeddings: torch.Tensor, labels: torch.Tensor):
    """02: per anchor with a positive and a negative, its farthest positive and closest negative."""
    distances = pairwise_distances(embeddings)
    positive, negative = pair_masks(labels)
    anchors = torch.nonzero(positive.any(1) & negative.any(1)).flatten()
    hardest_positive = distances.masked_fill(~positive, -1).argmax(1)
    hardest_negative = distances.masked_fill(~negative, float("inf")).argmin(1)
    return anchors, hardest_positive[anchors], hardest_negative[anchors]


def zero_logit_softmax(scores: torch.Tensor) -> torch.Tensor:
    """03: the published softmax, with an implicit extra logit of zero."""
    return scores.exp() / (1 + scores.exp().sum(dim=-1, keepdim=True))


def same_class_share(weights: np.ndarray, labels: np.ndarray) -> float:
    """04: mean over queries of (attention to other same-class samples) / (attention to other samples)."""
    same_class = labels[:, None] == labels[None, :]
    others = ~np.eye(len(labels), dtype=bool)
    return float(((weights * (same_class & others)).sum(1) / (weights * others).sum(1)).mean())


def recall_per_epoch(snapshots, labels) -> dict[int, float]:
    """05: Recall@1 of every embedding snapshot."""
    return {epoch: recall_at_k(embeddings, labels, ks=(1,))[1] for epoch, embeddings in snapshots}


def welch_t(first, second) -> float:
    """06: Welch's t-statistic of two groups of seeds."""
    x, y = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    return float((x.mean() - y.mean()) / np.sqrt(x.var(ddof=1) / len(x) + y.var(ddof=1) / len(y)))


def training_steps(epochs: int, training_images: int, batch_size: int) -> int:
    """07: optimizer steps of a run: epochs × whole batches per epoch."""
    return epochs * (training_images // batch_size)
