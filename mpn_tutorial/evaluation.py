"""Evaluating a model: embed a dataset (:func:`embed_dataset`), measure retrieval (:func:`evaluate`,
optionally after test-time refinement), and what the attention looks at (:func:`attention_diagnostics`,
:func:`class_similarity`), always inside :func:`evaluation_mode`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mpn_tutorial import metrics
from mpn_tutorial.backbones import fold_batchnorm
from mpn_tutorial.controls import (
    NoMessages,
    pass_messages,
    passes_messages,
    provide_labels,
    twin_network,
    without_messages,
)
from mpn_tutorial.data.build import Datasets, iterate_batches, sample_batch
from mpn_tutorial.errors import UsageError
from mpn_tutorial.miners import pair_masks
from mpn_tutorial.models import MetricLearningModel

# Images per forward when a dataset is embedded. Larger is not faster on a CPU: on 2 cores the glyph
# CNN took 1.45x longer per image at 512 than at 64-256 (its activations outgrow the caches).
EVAL_BATCH_SIZE = 256


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def evaluation_mode(model: torch.nn.Module, messages: bool | None = None) -> Iterator[torch.nn.Module]:
    """Evaluate ``model`` inside the block: eval mode (no dropout, BatchNorm's running statistics) and
    no autograd; ``messages=True`` also switches on the messages a warm-up holds back (``controls``).
    On leaving, the model is as it was (training mode, messages), whatever happened inside."""
    was_training, passing = model.training, passes_messages(model)
    model.eval()
    if messages is not None and messages != passing:
        pass_messages(model, messages)
    try:
        with torch.no_grad():
            yield model
    finally:
        if messages is not None and messages != passing:
            pass_messages(model, passing)
        model.train(was_training)


def embed_dataset(model: MetricLearningModel, dataset, batch_size: int = EVAL_BATCH_SIZE,
                  device: torch.device | str | None = None, num_workers: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised backbone embeddings of a whole dataset: ((N, D) float32, (N,) int64), on the CPU."""
    device = _device_of(model) if device is None else torch.device(device)
    chunks = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
    embeddings, labels = [], []
    with evaluation_mode(model), torch.inference_mode():
        # the same function as model.retrieval_embeddings in eval mode, without BatchNorm's passes
        backbone = fold_batchnorm(model.backbone)
        for images, batch_labels in iterate_batches(dataset, chunks, num_workers, device.type == "cuda"):
            features = model.embedding(backbone(images.to(device)))
            embeddings.append(torch.nn.functional.normalize(features, dim=1).float().cpu())
            labels.append(batch_labels)
    return torch.cat(embeddings), torch.cat(labels)


REFINEMENTS = ("mpn", "mpn_without_messages", "mean", "similarity_weighted")


def reciprocal_neighbourhoods(embeddings: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Per sample i: ``[i, its k-reciprocal neighbours...]``, the samples among its k nearest that also
    have i among theirs (or its nearest neighbour when none is mutual). embeddings (N, D)."""
    if k < 1:
        raise UsageError(f"refinement needs k >= 1 neighbours, got {k}")
    if len(embeddings) < 2:
        raise UsageError("test-time refinement needs at least 2 embeddings")
    neighbours = metrics.nearest_neighbours(embeddings.cpu(), min(k, len(embeddings) - 1))
    groups = []
    for i in range(len(embeddings)):
        candidates = neighbours[i]
        reciprocal = candidates[(neighbours[candidates] == i).any(dim=1)]
        groups.append(torch.cat([torch.tensor([i]), reciprocal if len(reciprocal) else candidates[:1]]))
    return groups


@torch.no_grad()
def refine_embeddings(model: MetricLearningModel | None, embeddings: torch.Tensor, k: int = 10,
                      method: str = "mpn", alpha: float = 3.0) -> torch.Tensor:
    """Test-time refinement over k-reciprocal neighbourhoods (:func:`reciprocal_neighbourhoods`): (N, D) -> (N, D'),
    L2-normalised. ``method``:

    - ``"mpn"`` (the paper's "pseudo-test" variant): the trained MPN (eval mode, messages on) passes messages over
      each sample's neighbourhood; the sample's output replaces its embedding (D' is the MPN's output size);
    - ``"mpn_without_messages"``: the MPN on each sample alone, messages off (a control for ``"mpn"``);
    - non-learned baselines on the same neighbourhoods (``model`` may be None): ``"mean"`` (average query
      expansion, self included) and ``"similarity_weighted"`` (alpha-query expansion: weights cos(e_i, e_j)^alpha,
      self weight 1, non-negative similarities only).
    """
    if method not in REFINEMENTS:
        raise UsageError(f"method must be one of {', '.join(REFINEMENTS)}, got {method!r}")
    if method.startswith("mpn") and (model is None or model.mpn is None):
        raise UsageError("test-time refinement by the MPN needs a model trained with message passing (loss='mpn')")
    embeddings = torch.nn.functional.normalize(embeddings.float(), dim=1)
    if method == "mpn_without_messages":
        return torch.nn.functional.normalize(run_mpn(model, embeddings, messages=False), dim=1)
    groups = reciprocal_neighbourhoods(embeddings, k)
    refined: list[torch.Tensor | None] = [None] * len(groups)
    for size in sorted({len(group) for group in groups}):  # neighbourhoods of one size: one batch of graphs
        which = [i for i, group in enumerate(groups) if len(group) == size]
        members = embeddings[torch.stack([groups[i] for i in which]).to(embeddings.device)]  # (B, size, D)
        if method == "mpn":
            outputs = run_mpn(model, members, messages=True)[:, 0]  # each sample's own output
        else:
            weights = torch.ones(members.shape[:2], device=embeddings.device)
            if method == "similarity_weighted":
                weights = (members @ members[:, :1].transpose(1, 2))[..., 0].clamp_min(0) ** alpha
            outputs = (weights[..., None] * members).sum(dim=1)
        for i, output in zip(which, outputs):
            refined[i] = output
    return torch.nn.functional.normalize(torch.stack(refined), dim=1)


def run_mpn(model: MetricLearningModel, embeddings: torch.Tensor, messages: bool = True) -> torch.Tensor:
    """The model's trained MPN (eval mode) on backbone embeddings (N, D) or (B, N, D) -> its output, with
    the messages on, or every message 0 (its :class:`~mpn_tutorial.controls.NoMessages` twin: each sample alone)."""
    with evaluation_mode(model, messages=True if messages else None):
        inputs = model.mpn_input(embeddings)
        return model.mpn(inputs) if messages else without_messages(model, inputs)


def evaluate(model: MetricLearningModel, dataset, ks: Sequence[int] = (1, 2, 4, 8), gallery=None,
             compute_nmi: bool = False, batch_size: int = EVAL_BATCH_SIZE, num_workers: int = 0, seed: int = 0,
             refine_k: int = 0, refine_method: str = "mpn") -> dict[str, float]:
    """Retrieval metrics of a model on a dataset (leave-one-out), or on query ``dataset`` vs ``gallery``.
    ``refine_k > 0`` first refines each set's embeddings over their k-reciprocal neighbourhoods
    (:func:`refine_embeddings` with ``refine_method``); off by default."""
    def embeddings_of(data) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings, labels = embed_dataset(model, data, batch_size, num_workers=num_workers)
        if refine_k:
            embeddings = refine_embeddings(model, embeddings.to(_device_of(model)), refine_k, refine_method).cpu()
        return embeddings, labels

    embeddings, labels = embeddings_of(dataset)
    if gallery is None:
        result = metrics.retrieval_metrics(embeddings, labels, ks)
    else:
        result = metrics.retrieval_metrics(embeddings, labels, ks, *embeddings_of(gallery))
    if compute_nmi:
        result["nmi"] = metrics.nmi(embeddings, labels, seed=seed)
    return result


def evaluate_on_test(model: MetricLearningModel, datasets: Datasets, dataset_name: str, compute_nmi: bool = False,
                     refine_k: int = 0, batch_size: int = EVAL_BATCH_SIZE, num_workers: int = 0, seed: int = 0,
                     refine_method: str = "mpn") -> dict[str, float]:
    """Test-class metrics with the K of Recall@K the literature reports (query vs gallery for In-Shop)."""
    ks = {"sop": (1, 10, 100, 1000), "inshop": (1, 10, 20, 30, 40, 50)}.get(dataset_name, (1, 2, 4, 8))
    return evaluate(model, datasets.evaluation, ks, datasets.gallery, compute_nmi=compute_nmi,
                    batch_size=batch_size, num_workers=num_workers, seed=seed, refine_k=refine_k,
                    refine_method=refine_method)


def batch_attention(model: MetricLearningModel, images: torch.Tensor, labels) -> np.ndarray:
    """The MPN's attention on one batch of images and their labels (N,) (read by the oracle control only),
    in eval mode with the messages on: (num_layers, num_heads, N, N), where ``[l, h, i, j]`` is the
    weight sample i gives to sample j in head h of layer l."""
    return _attention_and_embeddings(model, images, labels)[0]


def _attention_and_embeddings(model: MetricLearningModel, images: torch.Tensor,
                              labels) -> tuple[np.ndarray, np.ndarray]:
    """:func:`batch_attention`, and the backbone embeddings (N, D) of the same forward pass."""
    if not model.has_attention:
        raise UsageError("this model passes no messages (attention 'none'): it has no attention to show")
    device = _device_of(model)
    with evaluation_mode(model, messages=True):
        provide_labels(model, torch.as_tensor(labels).to(device))
        output = model(images.to(device), return_attention=True)
    return torch.stack(output.attention).float().cpu().numpy(), output.embeddings.float().cpu().numpy()


def diagnostic_batches(dataset, count: int, classes_per_batch: int = 8, samples_per_class: int = 6,
                       seed: int = 1000) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` fixed P×K batches of ``dataset`` (images, labels), the same for every run of a preset:
    what :func:`attention_diagnostics` measures on. P is capped at the dataset's number of classes."""
    classes_per_batch = min(classes_per_batch, int(dataset.num_classes))
    return [sample_batch(dataset, classes_per_batch, samples_per_class, seed=seed + index) for index in range(count)]


def attention_diagnostics(model: MetricLearningModel, batches) -> dict[str, float]:
    """What the MPN's attention does on some P×K batches (eval mode, no dropout), averaged over them:

    - ``share``: the same-class share of the attention to other samples (chance: (K - 1) / (P·K - 1)),
      mean over layers, heads and queries; and ``share_layer{l}_head{h}`` for each (from 1);
    - ``self_weight``: the mean weight a sample gives itself, a_ii (uniform: 1 / (P·K));
    - for learned attention only, ``score_spread``: the standard deviation over j of the scores s_ij (computed as
      that of log a_ij, equal for the softmax), about 0 for uniform attention; and ``similarity_share``:
      :func:`similarity_attention_share` of the backbone embeddings at the learned rows' mean entropy, i.e. how
      much of the class the learned attention finds beyond what the embedding's similarity already gives.
    """
    learned = model.config.mpn_attention == "learned"
    shares, self_weights, spreads, references = [], [], [], []
    for images, labels in batches:
        attention, embeddings = _attention_and_embeddings(model, images, labels)  # (L, H, N, N), (N, D)
        labels = np.asarray(labels)
        shares.append(metrics.same_class_attention_share(attention, labels))
        self_weights.append(np.diagonal(attention, axis1=-2, axis2=-1).mean())
        if learned:
            spreads.append(np.log(np.maximum(attention, 1e-38)).std(axis=-1).mean())
            references.append(similarity_attention_share(embeddings, labels, _row_entropy(attention).mean()))
    per_head = np.mean(shares, axis=0)  # (L, H)
    result = {"share": float(per_head.mean()), "self_weight": float(np.mean(self_weights))}
    if learned:
        result.update(score_spread=float(np.mean(spreads)), similarity_share=float(np.mean(references)))
    result.update({f"share_layer{layer + 1}_head{head + 1}": float(per_head[layer, head])
                   for layer in range(per_head.shape[0]) for head in range(per_head.shape[1])})
    return result


def _row_entropy(weights: np.ndarray) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum(axis=-1, keepdims=True)
    return -(weights * np.log(np.maximum(weights, 1e-300))).sum(axis=-1)


def similarity_attention_share(embeddings: np.ndarray, labels: np.ndarray, entropy: float) -> float:
    """Same-class share of softmax_j(beta cos(e_i, e_j)) (self included), with beta chosen so that the
    rows' mean entropy equals ``entropy`` (bisection; beta = 0 is uniform, the most entropy)."""
    normalised = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    cosine = normalised @ normalised.T

    def attention(beta: float) -> np.ndarray:
        logits = beta * cosine
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        return weights / weights.sum(axis=1, keepdims=True)

    low, high = 0.0, 1e4
    for _ in range(60):  # entropy falls as beta grows
        middle = (low + high) / 2
        low, high = (middle, high) if _row_entropy(attention(middle)).mean() > entropy else (low, middle)
    return float(metrics.same_class_attention_share(attention((low + high) / 2), labels))


def attention_share(model: MetricLearningModel, dataset, num_batches: int = 10, classes_per_batch: int = 8,
                    samples_per_class: int = 6, seed: int = 1000) -> float:
    """Mean same-class share of the MPN's attention on ``num_batches`` P×K batches of ``dataset``, e.g.
    held-out test classes (:func:`attention_diagnostics`). Chance is (K - 1) / (P·K - 1)."""
    batches = diagnostic_batches(dataset, num_batches, classes_per_batch, samples_per_class, seed)
    return attention_diagnostics(model, batches)["share"]


def _layer_outputs(network, inputs: torch.Tensor) -> list[torch.Tensor]:
    """The MPN's input map, then each layer's output, on one batch (N, D): [after the input map, layer 1, ...]."""
    outputs = [network.input_proj(inputs)]
    for layer in network.layers:
        outputs.append(layer(outputs[-1]))
    return outputs


def class_similarity(model: MetricLearningModel, batches) -> dict[str, dict[str, float]]:
    """The paper's Figure 1 claim, measured: "after each message-passing step, the embeddings of images of
    the same class become more similar". On P×K ``batches`` (images, labels), per stage of the MPN, the
    mean cosine similarity of same-class pairs (``same``, i != j), of other-class pairs (``other``) and
    ``gap`` = same - other, averaged over the batches. Stages: ``"backbone"`` (the MPN's input),
    ``"input map"``, ``"layer l"``, and ``"layer l, messages off"`` (the same layers, every message 0)."""
    if model.mpn is None:
        raise UsageError("class_similarity measures the MPN's layers: the model has no MPN (loss 'mpn')")
    device = _device_of(model)
    silent = twin_network(model, NoMessages)
    found: dict[str, list[tuple[float, float]]] = {}
    with evaluation_mode(model, messages=True):
        for images, labels in batches:
            inputs = model.mpn_input(model.embed(images.to(device)))
            is_same, is_other = pair_masks(torch.as_tensor(labels).to(device))
            with_messages, without = _layer_outputs(model.mpn, inputs), _layer_outputs(silent, inputs)
            stages = {"backbone": inputs, "input map": with_messages[0]}
            for index, (on, off) in enumerate(zip(with_messages[1:], without[1:]), 1):
                stages[f"layer {index}"], stages[f"layer {index}, messages off"] = on, off
            for stage, embeddings in stages.items():
                normalised = torch.nn.functional.normalize(embeddings.float(), dim=1)
                cosine = normalised @ normalised.T
                found.setdefault(stage, []).append((float(cosine[is_same].mean()), float(cosine[is_other].mean())))
    return {stage: {"same": float(np.mean([same for same, _ in values])),
                    "other": float(np.mean([other for _, other in values])),
                    "gap": float(np.mean([same - other for same, other in values]))} for stage, values in found.items()}
