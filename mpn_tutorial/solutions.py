"""Reference solutions of the notebooks' "your turn" exercises (try first, then compare).

Each takes what the exercise's check passes to the learner's code and returns the expected answer; its
docstring says why it is right (the teachers' answer key, ``make answer-key``, shows both).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mpn_tutorial.metrics import recall_at_k
from mpn_tutorial.miners import pair_masks, pairwise_distances
from mpn_tutorial.models import merge_heads, split_heads


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


def head_weights(x: torch.Tensor, W_q: torch.Tensor, b_q: torch.Tensor, W_k: torch.Tensor,
                 b_k: torch.Tensor) -> torch.Tensor:
    """03: one head's attention weights over the batch.

    Every sample gets a query and a key by the head's linear maps (weight and bias); the score of i on j
    is their dot product over sqrt(d), d the head's dimension, so that scores keep about unit spread
    whatever d is; a softmax over each row (over the samples j that i attends to, itself included)
    turns them into weights that sum to 1.
    """
    q, k = x @ W_q.T + b_q, x @ W_k.T + b_k
    return torch.softmax(q @ k.T / math.sqrt(q.shape[-1]), dim=-1)


def layer_forward(x: torch.Tensor, layer) -> torch.Tensor:
    """03: a message-passing layer's forward, from its named pieces.

    The heads split every sample's query, key and value; each head weights the batch's values by
    softmax(q k^T / sqrt(d)); the heads' results are concatenated per sample (merge_heads) and mapped
    by W_o into the message m_i. The two residual lines of a post-norm transformer block follow:
    x + m, normalised, then h + W_2 ReLU(W_1 h), normalised (dropout is off in eval mode).
    """
    heads = layer.num_heads
    q, k, v = (split_heads(projection(x), heads) for projection in (layer.q_proj, layer.k_proj, layer.v_proj))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    messages = layer.out_proj(merge_heads(weights @ v))
    h = layer.norm1(x + messages)
    ff = layer.feed_forward
    return layer.norm2(h + ff.linear2(torch.relu(ff.linear1(h))))


def objective(backbone_logits: torch.Tensor, mpn_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
              smoothing: float) -> torch.Tensor:
    """03: the paper's training objective.

    Both classifiers' logits are divided by the temperature (T below 1 sharpens the softmax) and scored
    by a label-smoothed cross-entropy, averaged over the batch; the two terms are added with weight 1
    each, so the backbone learns from its own classifier and, through the MPN, from the batch.
    """
    return sum(F.cross_entropy(logits / temperature, labels, label_smoothing=smoothing)
               for logits in (backbone_logits, mpn_logits))


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


def messages_effect(train, config, seeds) -> list[float]:
    """06: the messages' effect, seed by seed: test R@1 with messages minus without.

    Each seed trains the configuration and its messages-off control (config.without_messages(): the
    same head, initialisation and batches, nothing passed between samples), so everything the seed
    decides is shared by the two runs and cancels in their difference; what is left is the messages'
    effect plus the noise between runs, which the noise band measures.
    """
    differences = []
    for seed in seeds:
        on = train(config.replace(seed=seed)).test_metrics["recall@1"]
        off = train(config.without_messages().replace(seed=seed)).test_metrics["recall@1"]
        differences.append(on - off)
    return differences


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
