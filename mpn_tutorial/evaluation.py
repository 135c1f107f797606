"""Evaluating a model: embed a dataset, measure retrieval, and what the attention looks at.

- :func:`embed_dataset`: L2-normalised backbone embeddings of a whole dataset (what retrieval uses);
- :func:`evaluate`: Recall@K, MAP@R, R-precision (and NMI) on a dataset, leave-one-out or query
  vs. gallery; :func:`evaluate_on_test` with each benchmark's usual K;
- :func:`refine_embeddings`: optional test-time refinement with the trained MPN (off by default);
- :func:`attention_share`: how much of the MPN's attention stays within a sample's class, on
  held-out P×K batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mpn_tutorial import metrics
from mpn_tutorial.data.build import Datasets, iterate_batches, sample_batch
from mpn_tutorial.models import MetricLearningModel


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_dataset(
    model: MetricLearningModel,
    dataset,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised backbone embeddings of a whole dataset: ((N, D) float32, (N,) int64), on the CPU."""
    device = _device_of(model) if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    order = list(range(len(dataset)))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    embeddings, labels = [], []
    for images, batch_labels in iterate_batches(dataset, chunks, num_workers, device.type == "cuda"):
        embeddings.append(model.retrieval_embeddings(images.to(device)).float().cpu())
        labels.append(batch_labels)
    model.train(was_training)
    return torch.cat(embeddings), torch.cat(labels)


@torch.no_grad()
def refine_embeddings(model: MetricLearningModel, embeddings: torch.Tensor, k: int = 10) -> torch.Tensor:
    """Test-time refinement ("pseudo-test" variant of the paper): (N, D) -> (N, out_dim), normalised.

    For each sample, its k-reciprocal neighbourhood (the samples among its k nearest neighbours
    that also have it among theirs) plus the sample itself forms a small graph; the trained MPN
    (in eval mode, no dropout) refines the sample's embedding by message passing over it. The
    result replaces the backbone embedding for retrieval. Needs an MPN; costs N small MPN passes.
    """
    if model.mpn is None:
        raise ValueError("test-time refinement needs a model trained with message passing (loss='mpn')")
    if k < 1:
        raise ValueError(f"refinement needs k >= 1 neighbours, got {k}")
    embeddings = torch.nn.functional.normalize(embeddings.float(), dim=1)
    if len(embeddings) < 2:
        raise ValueError("test-time refinement needs at least 2 embeddings")
    neighbours = metrics.nearest_neighbours(embeddings.cpu(), min(k, len(embeddings) - 1))
    was_training = model.mpn.training
    model.mpn.eval()
    refined = []
    for i in range(len(embeddings)):
        candidates = neighbours[i]
        reciprocal = candidates[(neighbours[candidates] == i).any(dim=1)]
        group = torch.cat([torch.tensor([i]), reciprocal if len(reciprocal) else candidates[:1]])
        refined.append(model.mpn(embeddings[group.to(embeddings.device)])[0])
    model.mpn.train(was_training)
    return torch.nn.functional.normalize(torch.stack(refined), dim=1)


def evaluate(
    model: MetricLearningModel,
    dataset,
    ks: Sequence[int] = (1, 2, 4, 8),
    gallery=None,
    compute_nmi: bool = False,
    batch_size: int = 512,
    num_workers: int = 0,
    seed: int = 0,
    refine_k: int = 0,
) -> dict[str, float]:
    """Retrieval metrics of a model on a dataset (leave-one-out), or on query ``dataset`` vs ``gallery``.

    ``refine_k > 0`` turns on the optional test-time refinement (:func:`refine_embeddings`, off by
    default): each set's embeddings are replaced by the MPN's output over their k-reciprocal
    neighbourhoods.
    """
    def embeddings_of(data) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings, labels = embed_dataset(model, data, batch_size, num_workers=num_workers)
        if refine_k:
            embeddings = refine_embeddings(model, embeddings.to(_device_of(model)), k=refine_k).cpu()
        return embeddings, labels

    embeddings, labels = embeddings_of(dataset)
    if gallery is None:
        result = metrics.retrieval_metrics(embeddings, labels, ks)
    else:
        result = metrics.retrieval_metrics(embeddings, labels, ks, *embeddings_of(gallery))
    if compute_nmi:
        result["nmi"] = metrics.nmi(embeddings, labels, seed=seed)
    return result


def default_ks(dataset: str) -> tuple[int, ...]:
    """The K of Recall@K that the literature reports for each dataset."""
    return {"sop": (1, 10, 100, 1000), "inshop": (1, 10, 20, 30, 40, 50)}.get(dataset, (1, 2, 4, 8))


def evaluate_on_test(
    model: MetricLearningModel, datasets: Datasets, dataset_name: str, compute_nmi: bool = False,
    refine_k: int = 0, batch_size: int = 512, num_workers: int = 0, seed: int = 0,
) -> dict[str, float]:
    """Test-class metrics with the dataset's usual K (query vs gallery for In-Shop)."""
    options = dict(compute_nmi=compute_nmi, batch_size=batch_size, num_workers=num_workers, seed=seed,
                   refine_k=refine_k)
    return evaluate(model, datasets.evaluation, default_ks(dataset_name), gallery=datasets.gallery, **options)


@torch.no_grad()
def batch_attention(model: MetricLearningModel, images: torch.Tensor) -> np.ndarray:
    """The MPN's attention on one batch, in eval mode (no dropout): (num_layers, num_heads, N, N),
    where ``[l, h, i, j]`` is the weight sample i gives to sample j in head h of layer l."""
    was_training = model.training
    model.eval()
    embeddings = model.embed(images.to(_device_of(model)))
    attention = model.message_passing(embeddings, return_attention=True).attention
    model.train(was_training)
    return torch.stack(attention).float().cpu().numpy()


def attention_share(
    model: MetricLearningModel, dataset, num_batches: int = 10, classes_per_batch: int = 8,
    samples_per_class: int = 6, seed: int = 1000,
) -> float:
    """Mean same-class share of the MPN's attention (:func:`metrics.same_class_attention_share`,
    over layers, heads and queries) on ``num_batches`` P×K batches of ``dataset``, e.g. held-out
    test classes. Chance (attention that ignores classes) is (K - 1) / (P·K - 1)."""
    shares = []
    for index in range(num_batches):
        images, labels = sample_batch(dataset, classes_per_batch, samples_per_class, seed=seed + index)
        shares.append(metrics.same_class_attention_share(batch_attention(model, images), labels.numpy()).mean())
    return float(np.mean(shares))
