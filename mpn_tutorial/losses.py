"""Losses of deep metric learning: contrastive (pairs), triplet (with mining), smoothed cross-entropy,
and the paper's objective (smoothed cross-entropy on the backbone logits and on the MPN logits).

Pair and triplet losses take ``(embeddings (N, D), labels (N,))`` and work with the Euclidean distances of
``miners.pairwise_distances`` (L2-normalised, in [0, 2]). Every loss is defined on any batch: without a valid pair
or triplet it is a zero still connected to the embeddings, so ``loss.backward()`` gives zero gradients, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpn_tutorial.errors import UsageError
from mpn_tutorial.miners import Triplets, make_miner, pair_masks, pairwise_distances

# The published weights of the objective's two terms (TrainConfig's defaults name these).
BACKBONE_LOSS_WEIGHT = MPN_LOSS_WEIGHT = 1.0


def _check_inputs(embeddings: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if embeddings.dim() != 2:
        raise UsageError(f"{what} expects embeddings of shape (N, D), got {tuple(embeddings.shape)}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise UsageError(f"{what}: labels must have shape ({embeddings.shape[0]},) to match the embeddings, "
                         f"got {tuple(labels.shape)}")


def _zero(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero loss still connected to the graph (backward gives zero gradients)."""
    return embeddings.sum() * 0.0


class ContrastiveLoss(nn.Module):
    """Contrastive loss (Hadsell, Chopra, LeCun 2006) over all pairs of the batch:

        L = mean_{positive pairs} d_ij^2  +  mean_{negative pairs} max(0, margin - d_ij)^2

    Positives are pulled together, negatives pushed until ``margin`` apart. Each term averages over its
    own pairs (ordered, i != j), so the balance does not depend on how many negatives a batch holds.
    """

    def __init__(self, margin: float = 0.5) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(embeddings, labels, "ContrastiveLoss")
        distances = pairwise_distances(embeddings)
        positive, negative = pair_masks(labels)
        loss = _zero(embeddings)
        if positive.any():
            loss = loss + distances[positive].pow(2).mean()
        if negative.any():
            loss = loss + F.relu(self.margin - distances[negative]).pow(2).mean()
        return loss


class TripletLoss(nn.Module):
    """Triplet loss ``max(0, d(a, p) - d(a, n) + margin)``, averaged over the triplets that the miner of ``mining``
    picks (``miners.py``: ``"hard"``, ``"semihard"`` or ``"all"``); :meth:`mine` returns them, so that a notebook
    can draw what each strategy picks."""

    def __init__(self, margin: float = 0.2, mining: str = "hard") -> None:
        super().__init__()
        self.margin, self.mining = margin, mining
        self.miner = make_miner(mining, margin)

    @torch.no_grad()
    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Triplets:
        """Indices (anchor, positive, negative), each (T,), of the triplets the strategy uses."""
        _check_inputs(embeddings, labels, "TripletLoss")
        return self.miner(pairwise_distances(embeddings), labels)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(embeddings, labels, "TripletLoss")
        distances = pairwise_distances(embeddings)  # once: for mining and for the loss
        anchor, pos, neg = self.miner(distances.detach(), labels)
        if len(anchor) == 0:
            return _zero(embeddings)
        losses = F.relu(distances[anchor, pos] - distances[anchor, neg] + self.margin)
        return losses.mean() + _zero(embeddings)


class SmoothedCrossEntropy(nn.Module):
    """Label-smoothed cross-entropy on ``logits / temperature``: (N, C) logits, (N,) labels -> scalar.

    With smoothing ``eps`` the target puts ``1 - eps + eps/C`` on the true class and ``eps/C`` on
    every other class. A temperature below 1 sharpens the softmax (the published recipe uses 0.1-0.6).
    """

    def __init__(self, eps: float = 0.1, temperature: float = 1.0) -> None:
        super().__init__()
        if not 0 <= eps < 1:
            raise UsageError(f"eps must be in [0, 1), got {eps}")
        if temperature <= 0:
            raise UsageError(f"temperature must be positive, got {temperature}")
        self.eps, self.temperature = eps, temperature

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_inputs(logits, labels, "SmoothedCrossEntropy")
        if len(labels) == 0:
            return _zero(logits)
        if labels.min() < 0 or labels.max() >= logits.shape[1]:
            raise UsageError(f"SmoothedCrossEntropy: labels must lie in 0..{logits.shape[1] - 1} (the classifier has "
                             f"{logits.shape[1]} classes), got {int(labels.min())}..{int(labels.max())}")
        return F.cross_entropy(logits / self.temperature, labels, label_smoothing=self.eps)


def check_loss_weights(backbone_loss_weight: float, mpn_loss_weight: float) -> None:
    """The one rule for the objective's weights: non-negative, and not both zero (nothing would train)."""
    if backbone_loss_weight < 0 or mpn_loss_weight < 0 or backbone_loss_weight + mpn_loss_weight == 0:
        raise UsageError("the loss weights must be non-negative and not both zero (nothing would be trained), got "
                         f"backbone_loss_weight={backbone_loss_weight}, mpn_loss_weight={mpn_loss_weight}")


class MessagePassingObjective(nn.Module):
    """The training objective of the paper: smoothed cross-entropy on both classifiers' logits,

        L = w_b · CE_eps(z_b / T, y) + w_m · CE_eps(z_m / T, y)

    where ``z_b`` are the backbone classifier's logits, ``z_m`` the MPN's, ``T`` the temperature (here only: the
    model returns raw logits; no default, it differs from preset to preset), ``eps`` the label smoothing (0.1
    published) and ``w_b = w_m = 1`` as published. A caller logging the terms splits it: :meth:`terms`, :meth:`combine`.
    """

    def __init__(self, temperature: float, label_smoothing: float, backbone_loss_weight: float = BACKBONE_LOSS_WEIGHT,
                 mpn_loss_weight: float = MPN_LOSS_WEIGHT) -> None:
        super().__init__()
        check_loss_weights(backbone_loss_weight, mpn_loss_weight)
        self.cross_entropy = SmoothedCrossEntropy(eps=label_smoothing, temperature=temperature)
        self.backbone_loss_weight, self.mpn_loss_weight = backbone_loss_weight, mpn_loss_weight

    def terms(self, backbone_logits: torch.Tensor, mpn_logits: torch.Tensor,
              labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"backbone_ce": ..., "mpn_ce": ...}``, unweighted."""
        return {"backbone_ce": self.cross_entropy(backbone_logits.float(), labels),
                "mpn_ce": self.cross_entropy(mpn_logits.float(), labels)}

    def combine(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of :meth:`terms`."""
        return self.backbone_loss_weight * terms["backbone_ce"] + self.mpn_loss_weight * terms["mpn_ce"]

    def forward(self, backbone_logits: torch.Tensor, mpn_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.combine(self.terms(backbone_logits, mpn_logits, labels))
