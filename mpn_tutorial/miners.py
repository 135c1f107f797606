"""Miners: which triplets of a batch a triplet loss learns from.

A miner takes the batch's pairwise distances (N, N) and labels (N,) and returns index tensors (anchors, positives,
negatives), each (T,): triplet t is (anchors[t], positives[t], negatives[t]), the positive of the anchor's class (not
the anchor itself), the negative of another. Mining only chooses indices; the loss differentiates their distances.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mpn_tutorial.errors import UsageError

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between L2-normalised rows, ``d = sqrt(2 - 2 cos)``: (N, D) -> (N, N), in [0, 2].
    Clamped before the square root and the diagonal set to exactly zero, so the gradient is finite
    everywhere except at coinciding points (where the masks below never look)."""
    normalized = F.normalize(embeddings, dim=1)
    squared = (2 - 2 * normalized @ normalized.T).clamp_min(1e-12)
    distances = squared.sqrt()
    return distances * (1 - torch.eye(len(distances), dtype=distances.dtype, device=distances.device))


def pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (N, N) masks of positive pairs (same label, i != j) and negative pairs."""
    same = labels[:, None] == labels[None, :]
    not_self = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & not_self, ~same


class BatchHardMiner:
    """For each anchor that has a positive and a negative: its farthest positive and its closest
    negative ("batch hard", Hermans et al. 2017), the triplet that violates the margin most."""

    def __call__(self, distances: torch.Tensor, labels: torch.Tensor) -> Triplets:
        positive, negative = pair_masks(labels)
        anchors = torch.nonzero(positive.any(1) & negative.any(1)).flatten()
        farthest_positive = distances.masked_fill(~positive, -1.0).argmax(1)
        closest_negative = distances.masked_fill(~negative, float("inf")).argmin(1)
        return anchors, farthest_positive[anchors], closest_negative[anchors]


class SemiHardMiner:
    """For each (anchor, positive) pair, the closest negative that is still farther than the positive,
    ``d(a,p) < d(a,n) < d(a,p) + margin`` (FaceNet); pairs without such a negative are left out."""

    def __init__(self, margin: float) -> None:
        self.margin = margin

    def __call__(self, distances: torch.Tensor, labels: torch.Tensor) -> Triplets:
        positive, negative = pair_masks(labels)
        anchor, pos = torch.nonzero(positive, as_tuple=True)
        d_ap = distances[anchor, pos][:, None]  # (P, 1)
        d_an = distances[anchor]  # (P, N)
        semihard = negative[anchor] & (d_an > d_ap) & (d_an < d_ap + self.margin)
        has_one = semihard.any(1)
        closest = d_an.masked_fill(~semihard, float("inf")).argmin(1)
        return anchor[has_one], pos[has_one], closest[has_one]


class AllTripletsMiner:
    """Every valid triplet (a, p, n) that still violates the margin, ``d(a,p) - d(a,n) + margin > 0``
    ("batch all": the easy ones, with zero loss, would only dilute the mean)."""

    def __init__(self, margin: float) -> None:
        self.margin = margin

    def __call__(self, distances: torch.Tensor, labels: torch.Tensor) -> Triplets:
        positive, negative = pair_masks(labels)
        anchor, pos = torch.nonzero(positive, as_tuple=True)
        d_ap = distances[anchor, pos][:, None]  # (P, 1)
        violating = negative[anchor] & (d_ap - distances[anchor] + self.margin > 0)
        pair_index, neg = torch.nonzero(violating, as_tuple=True)
        return anchor[pair_index], pos[pair_index], neg


MINING_STRATEGIES = ("all", "hard", "semihard")


def make_miner(mining: str, margin: float):
    """The miner of a strategy: ``"all"``, ``"hard"`` or ``"semihard"``."""
    if mining not in MINING_STRATEGIES:
        raise UsageError(f"mining must be one of {MINING_STRATEGIES}, got {mining!r}")
    return {"all": AllTripletsMiner(margin), "hard": BatchHardMiner(), "semihard": SemiHardMiner(margin)}[mining]
