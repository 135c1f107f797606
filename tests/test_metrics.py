import numpy as np
import pytest
import torch

from mpn_tutorial.metrics import map_at_r, nmi, r_precision, recall_at_k, retrieval_metrics


def _reference(queries, query_labels, gallery=None, gallery_labels=None, ks=(1, 2, 4, 8)):
    """Brute force: sort each query's whole gallery; ties put negatives before positives."""
    leave_one_out = gallery is None
    if leave_one_out:
        gallery, gallery_labels = queries, query_labels
    similarity = queries.astype(np.float64) @ gallery.astype(np.float64).T
    recalls, average_precisions, r_precisions = {k: [] for k in ks}, [], []
    for i in range(len(queries)):
        candidates = [j for j in range(len(gallery)) if not (leave_one_out and j == i)]
        relevant = [gallery_labels[j] == query_labels[i] for j in candidates]
        r = sum(relevant)
        if r == 0:
            continue
        order = sorted(range(len(candidates)), key=lambda c: (-similarity[i, candidates[c]], relevant[c]))
        ranked = [relevant[c] for c in order]
        for k in ks:
            recalls[k].append(any(ranked[:k]))
        hits, precision_sum = 0, 0.0
        for position, is_relevant in enumerate(ranked[:r], start=1):
            if is_relevant:
                hits += 1
                precision_sum += hits / position
        average_precisions.append(precision_sum / r)
        r_precisions.append(hits / r)
    return {k: float(np.mean(v)) for k, v in recalls.items()}, float(np.mean(average_precisions)), float(
        np.mean(r_precisions)
    )


def _clustered(n_classes=12, per_class=7, dim=8, seed=0, noise=0.8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), per_class)
    points = centres[labels] + noise * rng.normal(size=(len(labels), dim))
    permutation = rng.permutation(len(labels))
    points = points[permutation].astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True), labels[permutation]


@pytest.mark.parametrize("block_size", [5, 16, 4096])
def test_leave_one_out_metrics_equal_brute_force_for_any_block_size(block_size):
    points, labels = _clustered()
    result = retrieval_metrics(points, labels, ks=(1, 2, 4, 8), block_size=block_size)
    recalls, expected_map, expected_r_precision = _reference(points, labels)
    for k, value in recalls.items():
        assert result[f"recall@{k}"] == pytest.approx(value, abs=1e-12)
    assert result["map@r"] == pytest.approx(expected_map, abs=1e-9)
    assert result["r_precision"] == pytest.approx(expected_r_precision, abs=1e-9)


def test_query_gallery_metrics_equal_brute_force():
    points, labels = _clustered(per_class=9, seed=1)
    queries, gallery = points[::3], np.delete(points, np.s_[::3], axis=0)
    query_labels, gallery_labels = labels[::3], np.delete(labels, np.s_[::3])
    result = retrieval_metrics(queries, query_labels, (1, 5), gallery, gallery_labels, block_size=7)
    recalls, expected_map, _ = _reference(queries, query_labels, gallery, gallery_labels, ks=(1, 5))
    assert result["recall@1"] == pytest.approx(recalls[1])
    assert result["recall@5"] == pytest.approx(recalls[5])
    assert result["map@r"] == pytest.approx(expected_map)


def test_ties_are_broken_against_the_query():
    # integer vectors give exactly tied similarities; normalize=False keeps them exact
    rng = np.random.default_rng(2)
    points = rng.integers(-1, 2, size=(40, 3)).astype(np.float32)
    labels = rng.integers(0, 4, size=40)
    result = retrieval_metrics(points, labels, ks=(1, 3), normalize=False, block_size=9)
    recalls, expected_map, expected_r_precision = _reference(points, labels, ks=(1, 3))
    assert result["recall@1"] == pytest.approx(recalls[1])
    assert result["recall@3"] == pytest.approx(recalls[3])
    assert result["map@r"] == pytest.approx(expected_map)
    assert result["r_precision"] == pytest.approx(expected_r_precision)


def test_a_negative_duplicate_of_the_best_positive_costs_recall_at_1():
    points = np.array([[1, 0], [0.8, 0.6], [0.8, 0.6], [0, 1]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    # query 0: its positive (index 1) and a negative (index 2) are the same point
    assert recall_at_k(points[:3], labels[:3], ks=(1,))[1] == 0.0
    # with K = 2 the tie no longer matters for queries 0, 1 and 3; query 2's positive ranks third
    assert recall_at_k(points, labels, ks=(2,))[2] == pytest.approx(0.75)


def test_known_answer_on_two_well_separated_classes():
    points = np.array([[1, 0], [0.99, 0.1], [0, 1], [0.1, 0.99]], dtype=np.float32)
    labels = [0, 0, 1, 1]
    assert recall_at_k(points, labels, ks=(1,)) == {1: 1.0}
    assert map_at_r(points, labels) == 1.0
    assert r_precision(points, labels) == 1.0


def test_map_at_r_counts_precision_only_within_the_first_r():
    # one query with R = 2 positives, ranked: positive, negative, positive, negative
    query = np.array([[1, 0]], dtype=np.float32)
    gallery = np.array([[0.95, 0.31], [0.9, 0.44], [0.5, 0.87], [-1, 0]], dtype=np.float32)
    result = retrieval_metrics(query, [0], (1, 2), gallery=gallery, gallery_labels=[0, 1, 0, 1])
    assert result["map@r"] == pytest.approx(0.5)  # (1/1) / R; the second positive is outside the first R
    assert result["r_precision"] == pytest.approx(0.5)
    assert result["recall@1"] == 1.0


def test_queries_without_a_positive_are_left_out_and_counted():
    points, labels = _clustered(n_classes=4, per_class=3)
    points = np.vstack([points, [[1, 0, 0, 0, 0, 0, 0, 0]]]).astype(np.float32)
    labels = np.append(labels, 99)
    result = retrieval_metrics(points, labels)
    assert result["queries_without_positive"] == 1 and result["queries"] == 12


def test_torch_and_numpy_inputs_give_the_same_plain_floats():
    points, labels = _clustered()
    from_numpy = recall_at_k(points, labels)
    from_torch = recall_at_k(torch.from_numpy(points), torch.from_numpy(labels))
    assert from_numpy == from_torch
    assert all(type(v) is float and 0 <= v <= 1 for v in from_numpy.values())


def test_nan_embeddings_get_a_clear_error():
    points, labels = _clustered()
    points[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(points, labels)


def test_labels_of_the_wrong_length_get_a_clear_error():
    points, labels = _clustered()
    with pytest.raises(ValueError, match="labels must have shape"):
        recall_at_k(points, labels[:-1])


def test_nmi_is_one_for_perfectly_separated_classes_and_low_for_random_labels():
    points, labels = _clustered(noise=0.01)
    assert nmi(points, labels) == pytest.approx(1.0)
    shuffled = np.random.default_rng(0).permutation(labels)
    assert nmi(points, shuffled) < 0.5


def test_nmi_defaults_to_the_number_of_evaluated_classes():
    points, labels = _clustered(noise=0.01)
    assert nmi(points, labels) == nmi(points, labels, n_clusters=12)
