"""01: the rank of each query's first positive (Recall@K needs nothing more)."""

from __future__ import annotations

import numpy as np
import torch

from mpn_tutorial.exercises.base import (
    Exercise,
    Mistake,
    as_array,
    constant,
    evaluated,
    generator,
    on_fresh_inputs,
    same_shape,
    solved,
)


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
    ranks = as_array(evaluated(answer, similarity, labels), "the ranks")
    expected = _ranks_expected(embeddings, labels)
    same_shape(ranks, expected, "the ranks (one per query)")
    if ranks.min() < 1:
        raise AssertionError("ranks are 1-based: the first position is rank 1, not 0")
    if not np.array_equal(ranks, expected):
        query = int(np.flatnonzero(ranks != expected)[0])
        raise AssertionError(f"query {query}: rank {ranks[query]:.0f} instead of {expected[query]:.0f}. Rank by "
                             "similarity, most similar first, and find the first position whose label is the query's")
    return ranks


def _first_positive_rank(answer, similarity, labels, embeddings) -> str:
    ranks = _compare_ranks(answer, similarity, labels, embeddings)
    fresh, fresh_labels = torch.randn(10, 4, generator=generator()), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    on_fresh_inputs(lambda: _compare_ranks(answer, _similarity(fresh), fresh_labels, fresh),
                     "10 random embeddings of 3 classes")
    return f"ranks {ranks.astype(int).tolist()}, as the library ranks (and on a batch of the check's own)"


def _example_ranks():
    toy = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [0.9, 0.3], [0.0, 1.0], [0.2, 0.9], [-1.0, 0.1], [-0.2, -1.0], [0.7, -0.7]]), dim=1)
    return _similarity(toy), torch.tensor([0, 0, 1, 1, 2, 2, 0]), toy


_ranks = solved("first_positive_rank", lambda inputs: inputs[:2])  # the solution takes (similarity, labels)

EXERCISES = {
    "first_positive_rank": Exercise(
        "01", "sort each row of similarity (descending), look up the labels of the ranked samples, and find the "
        "first position holding the query's label", _first_positive_rank, _example_ranks, (
            Mistake("0-based ranks", lambda inputs: lambda s, y: _ranks((s, y)) - 1, "1-based"),
            Mistake("the ranks copied from the notebook's output", lambda inputs: _ranks(inputs), "write a function"),
            Mistake("a function that returns the notebook's ranks whatever its arguments",
                    lambda inputs: constant(_ranks(inputs)), "returns the notebook's answer"),
        )),
}
