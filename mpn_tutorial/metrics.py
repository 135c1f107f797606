"""Retrieval metrics of deep metric learning: Recall@K, MAP@R, R-precision, and clustering NMI; plus each sample's
nearest neighbours, and how much of a model's attention stays within a class.

All functions take torch tensors or numpy arrays, L2-normalise by default (so similarity is the cosine, and ranking
by it equals ranking by Euclidean distance), and return plain floats in [0, 1]. Two protocols: **leave-one-out**
(CUB, Cars, SOP, glyphs: every sample is a query and the rest of the set its gallery) and **query / gallery**
(In-Shop: pass ``gallery=`` and ``gallery_labels=``).

For each query with ``R`` positives (gallery samples of its class), samples ranked by similarity, most similar first:

- Recall@K: 1 if a positive is among the first K, else 0; averaged over queries.
- R-precision: the fraction of positives among the first R.
- MAP@R (Musgrave et al., "A Metric Learning Reality Check", 2020): ``1/R * sum_{i<=R} P(i) * rel(i)``, where P(i)
  is the precision among the first i and rel(i) is 1 if the i-th is a positive.

**Exact and scalable.** No N×N matrix is ever held: similarities are computed block by block (only half of them in
leave-one-out mode, each block serving its rows and its columns), and per query only its exact rank (for every K)
and its R most similar negatives are kept. Memory: O(block² + N × R_max).

**Ties and duplicates.** Ties are broken against the query: a negative exactly as similar as a positive is ranked
before it, so duplicated points or a collapsed embedding never earn recall by luck of index order. Queries without
any positive in their gallery (a single-sample class in leave-one-out mode) are left out of every average;
:func:`retrieval_metrics` reports how many.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mpn_tutorial.errors import UsageError

BLOCK_SIZE = 4096


def _as_tensor(values, dtype: torch.dtype) -> torch.Tensor:
    tensor = values.detach().cpu() if isinstance(values, torch.Tensor) else torch.from_numpy(np.asarray(values))
    return tensor.to(dtype)


def _prepare(embeddings, labels, name: str, normalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    embeddings, labels = _as_tensor(embeddings, torch.float32), _as_tensor(labels, torch.int64)
    if embeddings.dim() != 2:
        raise UsageError(f"{name} must have shape (N, D), got {tuple(embeddings.shape)}")
    if labels.dim() != 1 or len(labels) != len(embeddings):
        raise UsageError(f"{name} labels must have shape ({len(embeddings)},) to match the embeddings, "
                         f"got {tuple(labels.shape)}")
    if not torch.isfinite(embeddings).all():
        raise UsageError(f"{name} contain NaN or infinite values; check the model that produced them")
    if normalize:
        embeddings = F.normalize(embeddings, dim=1)
    return embeddings.contiguous(), labels


def _class_ranges(labels: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each of ``classes`` starts and ends in sorted ``labels``: (starts, ends), each (len(classes),)."""
    return torch.searchsorted(labels, classes), torch.searchsorted(labels, classes, right=True)


def _positive_similarities(queries: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                           gallery_labels: torch.Tensor, leave_one_out: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query: its positives' similarities sorted high to low, padded with -inf -> (M, R_max); and R
    (M,). Inputs must be sorted by label: a class is then one run of rows and one run of columns."""
    classes = torch.unique_consecutive(query_labels)
    row_starts, row_ends = _class_ranges(query_labels, classes)
    column_starts, column_ends = _class_ranges(gallery_labels, classes)
    counts = column_ends - column_starts - (1 if leave_one_out else 0)
    num_positives = torch.repeat_interleave(counts, row_ends - row_starts)
    r_max = int(num_positives.max()) if len(num_positives) else 0
    positives = torch.full((len(queries), max(r_max, 1)), float("-inf"))
    for row_start, row_end, column_start, column_end, count in zip(
            row_starts.tolist(), row_ends.tolist(), column_starts.tolist(), column_ends.tolist(), counts.tolist()):
        similarity = queries[row_start:row_end] @ gallery[column_start:column_end].T
        if leave_one_out:
            # rows and columns are the same samples in the same order: drop the diagonal (self)
            similarity.fill_diagonal_(float("-inf"))
        if count > 0:
            positives[row_start:row_end, :count] = similarity.sort(dim=1, descending=True).values[:, :count]
    return positives, num_positives


def _negative_statistics(queries: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor,
                         gallery_labels: torch.Tensor, best_positive: torch.Tensor, top_k: int, leave_one_out: bool,
                         block_size: int, count: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One pass over similarity blocks. Per query: the number of negatives with similarity >= its best positive (M,)
    (None with ``count=False``), and its ``top_k`` most similar negatives, high to low, -inf padded (M, top_k).
    Inputs must be sorted by label (then a block whose label ranges do not overlap has no positives)."""
    m, n = len(queries), len(gallery)
    count_above = torch.zeros(m, dtype=torch.float64) if count else None
    top_negatives = torch.full((m, top_k), float("-inf"))
    # scratch memory for a block, its comparisons and its transposed copy, viewed at each block's shape so that
    # every block is contiguous (top-k and copies of a strided view of a larger block are much slower)
    largest = min(block_size, m) * min(block_size, n)
    block_memory, hits_memory, transposed_memory = (torch.empty(largest) for _ in range(3))

    def as_block(buffer: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        return buffer[: rows * columns].view(rows, columns)

    def keep_top(rows: slice, candidates: torch.Tensor) -> None:
        k = min(top_k, candidates.shape[1])
        merged = torch.cat([top_negatives[rows], candidates.topk(k, dim=1).values], dim=1)
        top_negatives[rows] = merged.topk(top_k, dim=1).values

    for row_start in range(0, m, block_size):
        rows = slice(row_start, min(row_start + block_size, m))
        for column_start in range(row_start if leave_one_out else 0, n, block_size):
            columns = slice(column_start, min(column_start + block_size, n))
            size = (rows.stop - rows.start, columns.stop - columns.start)
            similarity = torch.mm(queries[rows], gallery[columns].T, out=as_block(block_memory, *size))
            row_labels, column_labels = query_labels[rows], gallery_labels[columns]
            if row_labels[-1] >= column_labels[0] and column_labels[-1] >= row_labels[0]:  # may share a class
                similarity.masked_fill_(row_labels[:, None] == column_labels[None, :], float("-inf"))
            # (rows, columns) now holds negatives only; comparisons summed as floats are the
            # fastest exact way to count on CPU (a block row holds far fewer than 2**24 entries).
            if count:
                hits = torch.ge(similarity, best_positive[rows, None], out=as_block(hits_memory, *size))
                count_above[rows] += hits.sum(dim=1)
            keep_top(rows, similarity)
            if leave_one_out and column_start != row_start:
                # the same block, transposed, answers the column samples as queries
                if count:
                    hits = torch.ge(similarity, best_positive[None, columns], out=as_block(hits_memory, *size))
                    count_above[columns] += hits.sum(dim=0)
                # copied, then top-k along rows: 1.5x faster than a top-k along the block's columns
                keep_top(columns, as_block(transposed_memory, size[1], size[0]).copy_(similarity.T))
    return (count_above.round().to(torch.int64) if count else None), top_negatives


def retrieval_metrics(embeddings, labels, ks: Sequence[int] = (1, 2, 4, 8), gallery=None, gallery_labels=None,
                      normalize: bool = True, block_size: int = BLOCK_SIZE) -> dict[str, float]:
    """Recall@K for every K of ``ks``, MAP@R and R-precision from one pass over the similarities of embeddings (M, D)
    with labels (M,) (queries, and gallery in leave-one-out mode), or against ``gallery`` (N, D) and
    ``gallery_labels`` (N,). ``block_size``: side of the similarity blocks (memory ~ 3 * block_size² * 4 bytes).

    Returns ``{"recall@1": ..., "recall@2": ..., "map@r": ..., "r_precision": ..., "queries": number evaluated,
    "queries_without_positive": number left out}``.
    """
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise UsageError(f"ks must be positive integers, got {ks}")
    leave_one_out = gallery is None
    if leave_one_out != (gallery_labels is None):
        raise UsageError("pass both gallery= and gallery_labels=, or neither (leave-one-out)")
    queries, query_labels = _prepare(embeddings, labels, "embeddings", normalize)
    query_order = torch.argsort(query_labels, stable=True)
    queries, query_labels = queries[query_order], query_labels[query_order]
    if leave_one_out:
        gallery, gallery_labels = queries, query_labels
    else:
        gallery, gallery_labels = _prepare(gallery, gallery_labels, "gallery", normalize)
        if gallery.shape[1] != queries.shape[1]:
            raise UsageError(f"queries have {queries.shape[1]} dimensions but the gallery has {gallery.shape[1]}")
        gallery_order = torch.argsort(gallery_labels, stable=True)
        gallery, gallery_labels = gallery[gallery_order], gallery_labels[gallery_order]

    positives, num_positives = _positive_similarities(queries, query_labels, gallery, gallery_labels, leave_one_out)
    answerable = num_positives > 0
    r_max = positives.shape[1]
    # With K <= R_max for every K, a query's R_max most similar negatives also decide its Recall@K:
    # the negatives at least as similar as its best positive are the first ones among them (all of
    # them when fewer than R_max; at least R_max >= K otherwise). Else they are counted in the pass.
    count_in_pass = max(ks) > r_max
    count_above, top_negatives = _negative_statistics(queries, query_labels, gallery, gallery_labels, positives[:, 0],
                                                      r_max, leave_one_out, block_size, count=count_in_pass)
    if not count_in_pass:
        count_above = (top_negatives >= positives[:, :1]).sum(dim=1)
    count_above, top_negatives = count_above[answerable], top_negatives[answerable]
    positives, num_positives = positives[answerable], num_positives[answerable]
    num_queries = int(answerable.sum())
    if num_queries == 0:
        raise UsageError("no query has a positive in its gallery: every class has a single sample")

    # rank of the first positive = 1 + negatives at least as similar (ties against the query)
    result: dict[str, float] = {f"recall@{k}": float((count_above < k).double().mean()) for k in ks}

    # Rank of the m-th positive = m + negatives at least as similar; only ranks <= R matter, and
    # those need no more than the R most similar negatives, which is what top_negatives holds.
    # (M, R_max): top_negatives has R_max per query; a search in them, ascending, counts those below each positive
    negatives_above = r_max - torch.searchsorted(top_negatives.flip(1), positives)
    position = torch.arange(1, r_max + 1)
    rank = position[None, :] + negatives_above
    is_real = position[None, :] <= num_positives[:, None]
    in_top_r = is_real & (rank <= num_positives[:, None])
    precision_at_rank = position[None, :] / rank
    r = num_positives.double()
    return {**result, "map@r": float(((precision_at_rank * in_top_r).sum(dim=1) / r).mean()),
            "r_precision": float((in_top_r.sum(dim=1) / r).mean()), "queries": num_queries,
            "queries_without_positive": int((~answerable).sum())}


def recall_at_k(embeddings, labels, ks: Sequence[int] = (1, 2, 4, 8), gallery=None, gallery_labels=None,
                normalize: bool = True) -> dict[int, float]:
    """Recall@K for each K: ``{k: float}``. See the module docstring for protocol and ties."""
    metrics = retrieval_metrics(embeddings, labels, ks, gallery, gallery_labels, normalize)
    return {int(k): metrics[f"recall@{k}"] for k in ks}


def map_at_r(embeddings, labels, gallery=None, gallery_labels=None, normalize: bool = True) -> float:
    """Mean average precision at R (Musgrave et al. 2020)."""
    return retrieval_metrics(embeddings, labels, (1,), gallery, gallery_labels, normalize)["map@r"]


def r_precision(embeddings, labels, gallery=None, gallery_labels=None, normalize: bool = True) -> float:
    """Mean fraction of positives among each query's first R retrievals."""
    return retrieval_metrics(embeddings, labels, (1,), gallery, gallery_labels, normalize)["r_precision"]


def nmi(embeddings, labels, n_clusters: int | None = None, seed: int = 0, normalize: bool = True) -> float:
    """Normalised mutual information between the :func:`kmeans` clusters of the (L2-normalised) embeddings and the
    labels. ``n_clusters`` defaults to the number of classes *in the evaluated set* (the official release used the
    training-class count instead, a known flaw)."""
    points, labels = _prepare(embeddings, labels, "embeddings", normalize)
    n_clusters = int(len(torch.unique(labels))) if n_clusters is None else int(n_clusters)
    if not 1 <= n_clusters <= len(points):
        raise UsageError(f"n_clusters must be between 1 and the number of points ({len(points)}), got {n_clusters}")
    return normalized_mutual_information(labels, kmeans(points, n_clusters, seed=seed))


def normalized_mutual_information(labels, clusters) -> float:
    """NMI of two labelings of the same N samples: I(U; V) / ((H(U) + H(V)) / 2), natural logarithms
    (scikit-learn's ``normalized_mutual_info_score`` with its default arithmetic mean). 1 when both
    put every sample in one group; 0 when they share no information."""
    classes, class_index = np.unique(np.asarray(labels), return_inverse=True)
    groups, group_index = np.unique(np.asarray(clusters), return_inverse=True)
    if len(class_index) != len(group_index):
        raise UsageError(f"the two labelings must have the same length, got {len(class_index)} and {len(group_index)}")
    if len(classes) == len(groups) <= 1:
        return 1.0
    joint = np.bincount(class_index * len(groups) + group_index, minlength=len(classes) * len(groups))
    joint = joint.reshape(len(classes), len(groups)).astype(np.float64)
    total, rows, columns = joint.sum(), joint.sum(axis=1), joint.sum(axis=0)
    i, j = np.nonzero(joint)
    mutual = max(0.0, float((joint[i, j] / total * np.log(joint[i, j] * total / (rows[i] * columns[j]))).sum()))
    if mutual == 0.0:
        return 0.0

    def entropy(counts: np.ndarray) -> float:
        share = counts[counts > 0] / total
        return float(-(share * np.log(share)).sum())

    return mutual / ((entropy(rows) + entropy(columns)) / 2)


def _squared_distances(points: torch.Tensor, squared_norms: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """||x_i - c_k||^2 = ||x_i||^2 - 2 x_i . c_k + ||c_k||^2 (one matrix product): (N, D), (N,), (K, D) -> (N, K)."""
    distances = torch.addmm(squared_norms[:, None], points, centers.T, alpha=-2)
    return distances.add_((centers * centers).sum(dim=1)).clamp_min_(0)


def kmeans(points, n_clusters: int, seed: int = 0, max_iter: int = 300, tol: float = 1e-4) -> torch.Tensor:
    """k-means clustering of (N, D) points -> (N,) int64 cluster of each point, 0 .. n_clusters - 1.

    scikit-learn's ``KMeans(n_clusters, n_init=1, random_state=seed)``, its random draws included:
    greedy k-means++ seeding (each new centre the best of 2 + ln k candidates drawn with probability
    proportional to the squared distance to the nearest centre), then Lloyd's iterations (an emptied
    cluster takes the point farthest from its centre) until no assignment changes, the centres move
    less than ``tol`` times the data's mean variance, or ``max_iter``. Distances are float32 matrix
    products on the centred data: on near-ties an assignment may differ from scikit-learn's.
    """
    data = _as_tensor(points, torch.float64)
    if data.dim() != 2 or not 1 <= n_clusters <= len(data):
        raise UsageError(f"kmeans needs (N, D) points and 1 <= n_clusters <= N, got {tuple(data.shape)} and "
                         f"{n_clusters} clusters")
    data = data - data.mean(dim=0)  # as scikit-learn: centred data, smaller rounding errors
    threshold = float(data.var(dim=0, unbiased=False).mean()) * tol
    x = data.float().contiguous()
    squared_norms = (x * x).sum(dim=1)
    count = len(x)
    random = np.random.RandomState(seed)
    # k-means++ seeding
    trials = 2 + int(np.log(n_clusters))
    chosen = [int(random.choice(count, p=np.full(count, 1.0 / count)))]
    closest = _squared_distances(x, squared_norms, x[chosen]).squeeze(1).double()  # (N,)
    potential = float(closest.sum())
    for _ in range(1, n_clusters):
        targets = torch.from_numpy(random.uniform(size=trials) * potential)
        candidates = torch.searchsorted(torch.cumsum(closest, dim=0), targets).clamp_(max=count - 1)
        distances = torch.minimum(closest[:, None], _squared_distances(x, squared_norms, x[candidates]).double())
        potentials = distances.sum(dim=0)  # (trials,)
        best = int(torch.argmin(potentials))
        chosen.append(int(candidates[best]))
        closest, potential = distances[:, best].contiguous(), float(potentials[best])
    centers = x[chosen]
    # Lloyd's iterations
    previous, converged_strictly = None, False
    for _ in range(max_iter):
        distances = _squared_distances(x, squared_norms, centers)
        assignment = distances.argmin(dim=1)
        sums = torch.zeros_like(centers, dtype=torch.float64).index_add_(0, assignment, data)
        sizes = torch.bincount(assignment, minlength=n_clusters).double()
        empty = torch.nonzero(sizes == 0).flatten()
        if len(empty):  # scikit-learn's relocation: the points farthest from their centres start the empty clusters
            own = distances.gather(1, assignment[:, None]).squeeze(1)
            for cluster, point in zip(empty.tolist(), own.topk(len(empty)).indices.tolist()):
                sums[assignment[point]] -= data[point]
                sizes[assignment[point]] -= 1
                sums[cluster], sizes[cluster] = data[point], 1
        moved = (sums / sizes[:, None].clamp_min(1)).float()
        shift = float(((moved - centers).double() ** 2).sum())
        centers = moved
        if previous is not None and torch.equal(assignment, previous):
            converged_strictly = True
            break
        if shift <= threshold:
            break
        previous = assignment
    if not converged_strictly:  # the assignment to the final centres
        assignment = _squared_distances(x, squared_norms, centers).argmin(dim=1)
    return assignment


def nearest_neighbours(embeddings, k: int, queries: Sequence[int] | None = None,
                       block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """Indices of each query's ``k`` most similar *other* samples (cosine), most similar first, computed block by
    block: embeddings (N, D), ``queries`` indices into them (default: every sample) -> (len(queries), k) int64."""
    points = F.normalize(_as_tensor(embeddings, torch.float32), dim=1)
    queries = torch.arange(len(points)) if queries is None else torch.as_tensor(list(queries), dtype=torch.long)
    if not 1 <= k < len(points):
        raise UsageError(f"k must be between 1 and {len(points) - 1} (the other samples), got {k}")
    result = torch.empty(len(queries), k, dtype=torch.long)
    for start in range(0, len(queries), block_size):
        block = queries[start : start + block_size]
        similarity = points[block] @ points.T
        similarity[torch.arange(len(block)), block] = -float("inf")  # a sample is not its own neighbour
        result[start : start + len(block)] = similarity.topk(k, dim=1).indices
    return result


def same_class_attention_share(attention, labels, per_query: bool = False) -> np.ndarray:
    """Per layer and head: the share of attention to *other* samples that stays within the class.

    attention: (L, H, N, N), (H, N, N) or (N, N), where ``[..., i, j]`` is the weight sample i gives
    to sample j; labels (N,). Returns (L, H) (or (H,), or a number): the mean over queries i of
    ``sum_{j != i, same class} a_ij / sum_{j != i} a_ij``; with ``per_query=True`` that ratio for
    every query, (..., N). Chance on a P×K batch is about (K - 1) / (N - 1); only its class, 1.
    """
    attention = np.asarray(attention, dtype=np.float64)
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    others = ~np.eye(len(labels), dtype=bool)
    within = (attention * (same & others)).sum(-1)
    total = (attention * others).sum(-1)
    shares = within / np.maximum(total, 1e-12)
    return shares if per_query else shares.mean(-1)
