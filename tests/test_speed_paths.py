"""The fast paths of a preset run compute what the plain ones do: the BatchNorm-folded backbone,
NMI's k-means (against scikit-learn's) and the NMI score, and the lazily imported benchmark readers."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from mpn_tutorial import metrics
from mpn_tutorial.backbones import GlyphEncoder, ResNetBackbone, fold_batchnorm


def _with_running_statistics(backbone: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """The backbone after a few training-mode forwards, so that BatchNorm's statistics and affine maps
    are far from the identity (a fresh BatchNorm folds into nothing)."""
    generator = torch.Generator().manual_seed(0)
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 2.0, generator=generator)
            module.bias.data.uniform_(-0.5, 0.5, generator=generator)
    backbone.train()
    with torch.no_grad():
        for _ in range(3):
            backbone(images * 3 + 1)  # statistics away from mean 0, variance 1
    return backbone.eval()


def test_the_folded_glyph_encoder_equals_the_unfolded_one_in_eval_mode():
    torch.manual_seed(0)
    images = torch.rand(64, 1, 32, 32)
    encoder = _with_running_statistics(GlyphEncoder(1, (8, 16, 32)), images)
    folded = fold_batchnorm(encoder)
    with torch.no_grad():
        expected, got = encoder(images), folded(images)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_the_folded_resnet_equals_the_unfolded_one_in_eval_mode():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 64, 64)
    network = _with_running_statistics(ResNetBackbone("resnet18", pretrained=False), images)
    folded = fold_batchnorm(network)
    with torch.no_grad():
        expected, got = network(images), folded(images)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_folding_leaves_the_original_training_and_is_left_alone_by_it():
    torch.manual_seed(0)
    encoder = GlyphEncoder(1, (8, 16)).train()
    folded = fold_batchnorm(encoder)
    before = {name: tensor.clone() for name, tensor in folded.state_dict().items()}
    assert encoder.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())
    encoder(torch.rand(8, 1, 32, 32)).sum().backward()  # updates the original's running statistics
    with torch.no_grad():
        next(encoder.parameters()).add_(1.0)
    assert all(torch.equal(before[name], tensor) for name, tensor in folded.state_dict().items())
    assert not folded.training and not any(p.requires_grad for p in folded.parameters())


def test_kmeans_finds_the_same_clusters_as_scikit_learn_on_separated_blobs():
    random = np.random.RandomState(0)
    centres = random.randn(12, 8) * 3
    points = np.concatenate([centre + random.randn(40, 8) for centre in centres])
    for seed in range(3):
        expected = KMeans(12, n_init=1, random_state=seed).fit_predict(points)
        assert normalized_mutual_info_score(expected, metrics.kmeans(points, 12, seed=seed).numpy()) == 1.0


def test_kmeans_follows_scikit_learn_step_by_step_on_data_without_clusters():
    # no structure to find: the result depends on every random draw of the seeding and on each of
    # Lloyd's iterations, so only the same algorithm with the same draws gives the same partition
    for size, dimensions, clusters in ((600, 6, 20), (800, 2, 40)):
        points = np.random.RandomState(1).randn(size, dimensions)
        for seed in range(3):
            expected = KMeans(clusters, n_init=1, random_state=seed).fit_predict(points)
            np.testing.assert_array_equal(metrics.kmeans(points, clusters, seed=seed).numpy(), expected)
        assert not np.array_equal(metrics.kmeans(points, clusters, seed=0).numpy(),
                                  metrics.kmeans(points, clusters, seed=1).numpy())


def test_nmi_equals_the_scikit_learn_computation_it_replaced():
    random = np.random.RandomState(2)
    labels = np.repeat(np.arange(15), 12)
    embeddings = random.randn(15, 16)[labels] + 0.8 * random.randn(len(labels), 16)
    points = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    clusters = KMeans(15, n_init=1, random_state=0).fit_predict(points)
    assert metrics.nmi(embeddings, labels, seed=0) == pytest.approx(normalized_mutual_info_score(labels, clusters),
                                                                    abs=1e-12)


def test_normalized_mutual_information_equals_scikit_learn():
    random = np.random.RandomState(3)
    for _ in range(5):
        labels, clusters = random.randint(0, 7, 300), random.randint(0, 11, 300) * 5 - 2
        assert metrics.normalized_mutual_information(labels, clusters) == pytest.approx(
            normalized_mutual_info_score(labels, clusters), abs=1e-12)
    assert metrics.normalized_mutual_information([3, 3, 3], [1, 1, 1]) == 1.0  # one group each: a perfect match
    assert metrics.normalized_mutual_information([0, 1, 2], [1, 1, 1]) == 0.0


def test_importing_the_data_package_loads_no_benchmark_reader_until_one_is_asked_for():
    code = ("import sys; import mpn_tutorial.data as data; assert 'torchvision' not in sys.modules; "
            "from mpn_tutorial.data import CUB200, DatasetError; assert CUB200.__module__.endswith('benchmarks'); "
            "assert 'InShop' in dir(data); print('ok')")
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert finished.stdout.strip() == "ok", finished.stderr


def test_recall_read_from_the_kept_negatives_equals_recall_from_counting_every_negative():
    # ks within R_max: Recall@K comes from each query's R_max most similar negatives; a K beyond R_max
    # makes the pass count every negative instead. Ties, a class with fewer negatives than R_max, and
    # queries ranking many negatives first (a collapsed embedding) all occur here.
    generator = torch.Generator().manual_seed(0)
    labels = torch.cat([torch.zeros(30, dtype=torch.long), torch.randint(1, 25, (300,), generator=generator)])
    embeddings = torch.randint(0, 3, (len(labels), 4), generator=generator).float()
    embeddings[:40] = 1.0  # duplicates across classes
    r_max = int(torch.bincount(labels).max()) - 1
    ks = (1, 2, 4, 8, r_max)
    from_kept = metrics.retrieval_metrics(embeddings, labels, ks, block_size=64)
    counted = metrics.retrieval_metrics(embeddings, labels, ks + (r_max + 1,), block_size=64)
    assert 0 < from_kept["recall@1"] < 1
    for k in ks:
        assert from_kept[f"recall@{k}"] == counted[f"recall@{k}"]
    assert from_kept["map@r"] == counted["map@r"] and from_kept["r_precision"] == counted["r_precision"]
