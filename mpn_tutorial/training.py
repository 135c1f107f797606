"""One training loop for every loss: contrastive, triplet, cross-entropy, and cross-entropy + MPN.

``train(config)`` builds the datasets and the model of a :class:`TrainConfig`, trains for
``config.epochs`` epochs of P×K batches, evaluates Recall@1 on the *validation classes* (carved
from the training classes) after every epoch, keeps the best model by that number (never by a
test number), and finally evaluates the best model on the test classes.

Checkpoints (``checkpoint_dir``): ``last.pt`` after every epoch, with everything needed to
continue exactly (model, optimizer, scheduler, history, best model, all random number generator
states), and ``best.pt`` (model, config, validation metrics). Both are written to a temporary
file and renamed, so an interrupted save never destroys the previous checkpoint, and both are
loaded with ``torch.load(weights_only=True)``. ``train(config, checkpoint_dir, resume=True)``
continues from ``last.pt``; on CPU the result is bit-for-bit the one of an uninterrupted run.

Callbacks watch training without changing it: :class:`EmbeddingSnapshots` (embeddings of a
dataset after every epoch, for UMAP), :class:`AttentionCapture` (attention maps of a fixed batch
after every epoch), :class:`CSVLogger`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mpn_tutorial import metrics
from mpn_tutorial.losses import ContrastiveLoss, SmoothedCrossEntropy, TripletLoss
from mpn_tutorial.models import MetricLearningModel, ModelConfig, ModelOutput

LOSSES = ("contrastive", "triplet", "ce", "mpn")
CHECKPOINT_FORMAT = 1


@dataclass
class TrainConfig:
    """Every setting of a training run. Presets (``presets.py``) fill it for each dataset."""

    preset: str = "glyphs"
    dataset: str = "glyphs"  # glyphs | cub | cars | sop | inshop
    data_root: str = "data"
    image_size: int = 32
    val_fraction: float = 0.2  # share of training classes held out for validation (benchmarks)
    data_seed: int = 0  # glyph rendering and class split; `seed` below is for the training run
    loss: str = "mpn"  # contrastive | triplet | ce | mpn
    # model
    backbone: str = "glyph_cnn"
    glyph_channels: tuple[int, ...] = (32, 64, 128, 256)
    embedding_dim: int = 64
    pretrained: bool = False
    weights_path: str | None = None
    mpn_layers: int = 1
    mpn_heads: int = 2
    mpn_ff_dim: int = 2048
    mpn_dropout: float = 0.1
    zero_logit: bool = False
    concat_layers: bool = False
    mpn_pass_messages: bool = True  # False: the MPN head without message passing (ablation control)
    temperature: float = 0.1
    # losses
    label_smoothing: float = 0.1
    backbone_loss_weight: float = 1.0
    mpn_loss_weight: float = 1.0
    triplet_margin: float = 0.2
    triplet_mining: str = "hard"
    contrastive_margin: float = 0.5
    # optimisation
    optimizer: str = "adam"  # adam | radam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 12
    batches_per_epoch: int | None = 50  # None: len(train) // (P*K)
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_factor: float = 0.1
    classes_per_batch: int = 8
    samples_per_class: int = 6
    seed: int = 0
    # machinery
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0
    eval_batch_size: int = 512
    amp: bool = False  # bf16 autocast (CUDA only)
    channels_last: bool = False  # CUDA only
    checkpointing: bool = False  # activation checkpointing of the ResNet stages

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed (unknown names raise)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        values = dict(values)
        for name in ("glyph_channels", "lr_decay_epochs"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def validate(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss == "mpn" and self.mpn_layers < 1:
            raise ValueError("loss='mpn' needs mpn_layers >= 1")
        if self.embedding_dim % max(self.mpn_heads, 1) != 0 and self.loss == "mpn":
            raise ValueError(f"embedding_dim={self.embedding_dim} must be divisible by mpn_heads={self.mpn_heads}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")

    def model_config(self, num_classes: int) -> ModelConfig:
        """The model this run trains, for ``num_classes`` training classes."""
        uses_classifier = self.loss in ("ce", "mpn")
        return ModelConfig(
            backbone=self.backbone,
            embedding_dim=self.embedding_dim,
            num_classes=num_classes if uses_classifier else 0,
            in_channels=1 if self.dataset == "glyphs" else 3,
            glyph_channels=tuple(self.glyph_channels),
            pretrained=self.pretrained,
            weights_path=self.weights_path,
            checkpointing=self.checkpointing,
            mpn_layers=self.mpn_layers if self.loss == "mpn" else 0,
            mpn_heads=self.mpn_heads,
            mpn_ff_dim=self.mpn_ff_dim,
            mpn_dropout=self.mpn_dropout,
            zero_logit=self.zero_logit,
            concat_layers=self.concat_layers,
            mpn_pass_messages=self.mpn_pass_messages,
            temperature=self.temperature,
        )


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclass
class Datasets:
    """train / val are class-disjoint parts of the training classes; test (or query + gallery) the rest."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset | None = None
    query: torch.utils.data.Dataset | None = None
    gallery: torch.utils.data.Dataset | None = None


def build_datasets(config: TrainConfig) -> Datasets:
    """The datasets of a configuration (the glyphs are generated and cached on first use)."""
    if config.dataset == "glyphs":
        from mpn_tutorial.data.glyphs import GlyphDataset

        def glyphs(split: str) -> GlyphDataset:
            return GlyphDataset(split, root=config.data_root, seed=config.data_seed, image_size=config.image_size)

        return Datasets(train=glyphs("train"), val=glyphs("val"), test=glyphs("test"))

    from mpn_tutorial.data import benchmarks, transforms
    from mpn_tutorial.data.splits import ClassSubset, carve_validation_classes

    readers = {
        "cub": benchmarks.CUB200,
        "cars": benchmarks.Cars196,
        "sop": benchmarks.StanfordOnlineProducts,
        "inshop": benchmarks.InShop,
    }
    if config.dataset not in readers:
        raise ValueError(f"dataset must be 'glyphs' or one of {sorted(readers)}, got {config.dataset!r}")
    reader = readers[config.dataset]
    root = dataset_root(config)
    train_view = reader(root, "train", transform=transforms.train_transform(config.image_size))
    eval_view = reader(root, "train", transform=transforms.test_transform(config.image_size))
    val_classes = carve_validation_classes(train_view.num_classes, config.val_fraction, config.data_seed)
    train_classes = np.setdiff1d(np.arange(train_view.num_classes), val_classes)
    test_transform = transforms.test_transform(config.image_size)
    datasets = Datasets(train=ClassSubset(train_view, train_classes), val=ClassSubset(eval_view, val_classes))
    if config.dataset == "inshop":
        datasets.query = reader(root, "query", transform=test_transform)
        datasets.gallery = reader(root, "gallery", transform=test_transform)
    else:
        datasets.test = reader(root, "test", transform=test_transform)
    return datasets


def dataset_root(config: TrainConfig) -> Path:
    """The folder a benchmark reader takes: ``data_root`` itself, or the dataset's folder inside it
    where ``fetch`` puts it (``data/CUB_200_2011`` when ``data_root`` is ``data``)."""
    from mpn_tutorial.data.fetch import DATASETS

    root = Path(config.data_root)
    nested = root / DATASETS[config.dataset].folder
    return nested if nested.is_dir() else root


def _batches(dataset, index_lists, num_workers: int, pin_memory: bool):
    """Yield (images, labels) for each list of indices; fast path for in-memory datasets."""
    if getattr(dataset, "in_memory", False):
        for indices in index_lists:
            yield dataset.batch(indices)
        return
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=index_lists, num_workers=num_workers, pin_memory=pin_memory
    )
    yield from loader


def load_batch(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, C, H, W) and labels (B,) of some dataset indices, for any dataset of this package."""
    if getattr(dataset, "in_memory", False):
        return dataset.batch(indices)
    items = [dataset[int(i)] for i in indices]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])


def sample_batch(dataset, classes_per_batch: int = 8, samples_per_class: int = 6, seed: int = 0):
    """One P×K batch of a dataset, as the training loop would draw it: (images, labels)."""
    from mpn_tutorial.data.sampler import PKSampler

    indices = next(iter(PKSampler(dataset.labels, classes_per_batch, samples_per_class, seed=seed, num_batches=1)))
    return load_batch(dataset, indices)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
    return device


@torch.no_grad()
def embed_dataset(
    model: MetricLearningModel,
    dataset,
    batch_size: int = 512,
    device: torch.device | str | None = None,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised backbone embeddings of a whole dataset: ((N, D) float32, (N,) int64), on the CPU."""
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    order = list(range(len(dataset)))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    embeddings, labels = [], []
    for images, batch_labels in _batches(dataset, chunks, num_workers, device.type == "cuda"):
        embeddings.append(model(images.to(device)).float().cpu())
        labels.append(torch.as_tensor(batch_labels))
    model.train(was_training)
    return torch.cat(embeddings), torch.cat(labels)


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

    ``refine_k > 0`` turns on the optional test-time refinement ("pseudo-test" variant, off by
    default): each set's embeddings are replaced by the MPN's output over their k-reciprocal
    neighbourhoods (:meth:`MetricLearningModel.refine_embeddings`).
    """
    embeddings, labels = embed_dataset(model, dataset, batch_size, num_workers=num_workers)
    if refine_k:
        embeddings = model.refine_embeddings(embeddings.to(next(model.parameters()).device), k=refine_k).cpu()
    if gallery is None:
        result = metrics.retrieval_metrics(embeddings, labels, ks)
    else:
        gallery_embeddings, gallery_labels = embed_dataset(model, gallery, batch_size, num_workers=num_workers)
        if refine_k:
            gallery_embeddings = model.refine_embeddings(
                gallery_embeddings.to(next(model.parameters()).device), k=refine_k).cpu()
        result = metrics.retrieval_metrics(embeddings, labels, ks, gallery_embeddings, gallery_labels)
    if compute_nmi:
        result["nmi"] = metrics.nmi(embeddings, labels, seed=seed)
    return result


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------


class Objective:
    """The training loss of a configuration, from a :class:`ModelOutput` and the labels."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.cross_entropy = SmoothedCrossEntropy(eps=config.label_smoothing)
        self.triplet = TripletLoss(config.triplet_margin, config.triplet_mining)
        self.contrastive = ContrastiveLoss(config.contrastive_margin)

    def __call__(self, output: ModelOutput, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.config.loss
        if loss == "contrastive":
            total = self.contrastive(output.embeddings.float(), labels)
            return total, {"contrastive": total.item()}
        if loss == "triplet":
            total = self.triplet(output.embeddings.float(), labels)
            return total, {"triplet": total.item()}
        backbone = self.cross_entropy(output.backbone_logits.float(), labels)
        if loss == "ce":
            return backbone, {"backbone_ce": backbone.item()}
        mpn = self.cross_entropy(output.mpn_logits.float(), labels)
        total = self.config.backbone_loss_weight * backbone + self.config.mpn_loss_weight * mpn
        return total, {"backbone_ce": backbone.item(), "mpn_ce": mpn.item()}


# ---------------------------------------------------------------------------------------------
# Callbacks
# ---------------------------------------------------------------------------------------------


class Callback:
    """Hooks called by :func:`train`. ``state`` is the live :class:`TrainState`.

    A callback whose recordings can be stored by :func:`train_cached` also defines
    ``cache_key()`` (a string naming what it records), ``recordings()`` (tensors, lists, numbers)
    and ``restore(recordings)``.
    """

    def on_train_start(self, state: TrainState) -> None:  # noqa: B027 - optional hook
        pass

    def on_epoch_end(self, state: TrainState) -> None:  # noqa: B027 - optional hook
        pass


def _fingerprint(*tensors) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(np.ascontiguousarray(np.asarray(tensor)).tobytes())
    return digest.hexdigest()[:16]


class EmbeddingSnapshots(Callback):
    """Embeddings of ``dataset`` before training (epoch 0) and after every ``every`` epochs.

    ``snapshots``: list of ``(epoch, (N, D) float32 numpy array)``; ``labels``: (N,) numpy.
    Evaluation-mode forward passes use no random numbers, so taking snapshots never changes
    the training run.
    """

    def __init__(self, dataset, every: int = 1, batch_size: int = 512) -> None:
        self.dataset = dataset
        self.every = every
        self.batch_size = batch_size
        self.snapshots: list[tuple[int, np.ndarray]] = []
        self.labels: np.ndarray | None = None

    def _take(self, state: TrainState) -> None:
        embeddings, labels = embed_dataset(state.model, self.dataset, self.batch_size)
        self.snapshots.append((state.epoch, embeddings.numpy()))
        self.labels = labels.numpy()

    def on_train_start(self, state: TrainState) -> None:
        if state.epoch == 0:
            self._take(state)

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch % self.every == 0 or state.epoch == state.config.epochs:
            self._take(state)

    def cache_key(self) -> str:
        return f"embeddings-every{self.every}-{_fingerprint(*_dataset_identity(self.dataset))}"

    def recordings(self) -> dict:
        return {"epochs": [epoch for epoch, _ in self.snapshots],
                "embeddings": [torch.from_numpy(e) for _, e in self.snapshots],
                "labels": torch.from_numpy(self.labels)}

    def restore(self, recordings: dict) -> None:
        self.snapshots = [(int(epoch), embeddings.numpy())
                          for epoch, embeddings in zip(recordings["epochs"], recordings["embeddings"])]
        self.labels = recordings["labels"].numpy()


def _dataset_identity(dataset) -> tuple:
    """Arrays that identify a dataset's content cheaply (in-memory datasets: all images)."""
    images = dataset.images if getattr(dataset, "in_memory", False) else None
    return (np.asarray(dataset.labels),) + ((images.numpy(),) if images is not None else ())


class AttentionCapture(Callback):
    """Attention of the MPN on one fixed batch, after every epoch (model in eval mode, no dropout).

    ``snapshots``: list of ``(epoch, array (num_layers, num_heads, N, N))`` where entry
    ``[l, h, i, j]`` is the weight sample i gives to sample j in head h of layer l.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = torch.as_tensor(labels)
        self.snapshots: list[tuple[int, np.ndarray]] = []

    @torch.no_grad()
    def attention(self, model: MetricLearningModel) -> np.ndarray:
        if model.mpn is None:
            raise ValueError("AttentionCapture needs a model with message passing (loss='mpn')")
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        embeddings = model.embed(self.images.to(device))
        _, attention = model.mpn(F.normalize(embeddings, dim=1), return_attention=True)
        model.train(was_training)
        return torch.stack(attention).float().cpu().numpy()

    def on_train_start(self, state: TrainState) -> None:
        if state.epoch == 0:
            self.snapshots.append((0, self.attention(state.model)))

    def on_epoch_end(self, state: TrainState) -> None:
        self.snapshots.append((state.epoch, self.attention(state.model)))

    def cache_key(self) -> str:
        return f"attention-{_fingerprint(self.images.numpy(), self.labels.numpy())}"

    def recordings(self) -> dict:
        return {"epochs": [epoch for epoch, _ in self.snapshots],
                "attention": [torch.from_numpy(a) for _, a in self.snapshots]}

    def restore(self, recordings: dict) -> None:
        self.snapshots = [(int(epoch), attention.numpy())
                          for epoch, attention in zip(recordings["epochs"], recordings["attention"])]


def tutorial_recorders(datasets: Datasets, num_classes: int = 20, seed: int = 0) -> dict[str, Callback]:
    """The recordings the notebooks make while training the MPN (so later notebooks share one run):

    - ``"attention"``: :class:`AttentionCapture` on one fixed P×K batch (8 × 6) of training classes;
    - ``"embeddings"``: :class:`EmbeddingSnapshots` of the first ``num_classes`` test classes.
    """
    from mpn_tutorial.data.splits import ClassSubset

    images, labels = sample_batch(datasets.train, 8, 6, seed=seed)
    test = datasets.test if datasets.test is not None else datasets.query
    subset = ClassSubset(test, np.arange(min(num_classes, test.num_classes)))
    return {"attention": AttentionCapture(images, labels), "embeddings": EmbeddingSnapshots(subset)}


class CSVLogger(Callback):
    """Appends each epoch's history row to a CSV file (the header is written once)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def on_epoch_end(self, state: TrainState) -> None:
        row = state.history[-1]
        new = not self.path.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)


class TensorBoardLogger(Callback):
    """Logs each epoch's history row to TensorBoard (needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError when tensorboard is missing

        self.writer = SummaryWriter(str(log_dir))

    def on_epoch_end(self, state: TrainState) -> None:
        row = state.history[-1]
        for name, value in row.items():
            if name not in ("epoch", "step") and isinstance(value, (int, float)):
                self.writer.add_scalar(name, value, row["epoch"])
        self.writer.flush()


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def save_atomically(payload: dict, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by this module, safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable mpn_tutorial checkpoint ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "config" not in payload:
        raise ValueError(f"{path} is not an mpn_tutorial checkpoint (format {CHECKPOINT_FORMAT})")
    return payload


def check_same_preset(checkpoint: dict, config: TrainConfig, path: str | os.PathLike) -> None:
    """Refuse a checkpoint trained with another preset or another model shape."""
    saved = checkpoint["config"]
    if saved.get("preset") != config.preset:
        raise ValueError(
            f"checkpoint {path} was trained with preset {saved.get('preset')!r}, not {config.preset!r}; "
            f"use --preset {saved.get('preset')} or another checkpoint directory"
        )
    for name in ("dataset", "backbone", "embedding_dim", "loss", "mpn_layers", "mpn_heads"):
        if saved.get(name) != getattr(config, name):
            raise ValueError(
                f"checkpoint {path} has {name}={saved.get(name)!r} but this run asks for "
                f"{getattr(config, name)!r}; use another checkpoint directory"
            )


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_position": int(numpy_state[2]),
        "numpy_gauss": (int(numpy_state[3]), float(numpy_state[4])),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    has_gauss, cached = state["numpy_gauss"]
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_position"], has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainState:
    """What callbacks see: the run's configuration, model, datasets and progress so far."""

    config: TrainConfig
    model: MetricLearningModel
    datasets: Datasets
    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = -math.inf


@dataclass
class TrainResult:
    """The outcome of :func:`train`: the best model (by validation Recall@1) and its numbers."""

    config: TrainConfig
    model: MetricLearningModel
    history: list[dict]
    best_epoch: int
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    seconds: float


def create_model(config: TrainConfig, num_classes: int) -> MetricLearningModel:
    """A freshly initialised model for ``config`` (seeded with ``config.seed``), on the CPU."""
    torch.manual_seed(config.seed)
    return MetricLearningModel(config.model_config(num_classes))


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    options = {"lr": config.lr, "weight_decay": config.weight_decay}
    # One fused kernel (or one op per group) instead of a Python loop over ~40 parameter tensors:
    # the MPN adds many small tensors, and per-tensor overhead dominated its cost on CPU.
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, fused=True, **options)
    if config.optimizer == "radam":
        return torch.optim.RAdam(parameters, foreach=True, **options)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, fused=True, **options)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, momentum=0.9, **options)
    raise ValueError(f"optimizer must be adam, radam, adamw or sgd, got {config.optimizer!r}")


def _model_state(model: torch.nn.Module) -> dict:
    return {name: value.detach().clone().cpu() for name, value in model.state_dict().items()}


def train(
    config: TrainConfig,
    callbacks: Sequence[Callback] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    datasets: Datasets | None = None,
    evaluate_test: bool = True,
    compute_nmi: bool = False,
    distributed=None,
) -> TrainResult:
    """Train a model as ``config`` says; return the best model by validation Recall@1.

    Args:
        config: the run's settings (see :class:`TrainConfig` and ``presets.py``).
        callbacks: observers (snapshots, attention capture, logging).
        checkpoint_dir: where ``last.pt`` / ``best.pt`` go (None: keep nothing on disk).
        resume: continue from ``checkpoint_dir/last.pt`` if it exists.
        progress: show tqdm progress bars.
        datasets: reuse already-built datasets (default: ``build_datasets(config)``).
        evaluate_test: evaluate the best model on the test classes at the end.
        compute_nmi: also compute NMI on the test classes (k-means; slower).
        distributed: a :class:`~mpn_tutorial.distributed.DistributedContext` (None: one process).
    """
    config.validate()
    start_time = time.perf_counter()
    from mpn_tutorial.runtime import seed_everything

    device = resolve_device(config.device) if distributed is None else distributed.device
    datasets = build_datasets(config) if datasets is None else datasets
    num_classes = int(datasets.train.num_classes)
    seed_everything(config.seed)
    model = create_model(config, num_classes).to(device)
    if config.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(config.lr_decay_epochs), gamma=config.lr_decay_factor
    )
    objective = Objective(config)
    from mpn_tutorial.data.sampler import PKSampler

    sampler = PKSampler(
        datasets.train.labels,
        config.classes_per_batch,
        config.samples_per_class,
        seed=config.seed,
        num_batches=config.batches_per_epoch,
    )
    step_model = model  # what the training step calls: the model itself, or its DDP wrapper
    if distributed is not None:
        sampler = distributed.shard_sampler(sampler)
        step_model = distributed.wrap(model)

    state = TrainState(config=config, model=model, datasets=datasets)
    best_model = _model_state(model)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    last_path = checkpoint_dir / "last.pt" if checkpoint_dir is not None else None
    if resume and last_path is not None and last_path.exists():
        checkpoint = load_checkpoint(last_path, map_location=device)
        check_same_preset(checkpoint, config, last_path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state.epoch, state.step = checkpoint["epoch"], checkpoint["step"]
        state.history = list(checkpoint["history"])
        state.best_epoch, state.best_metric = checkpoint["best_epoch"], checkpoint["best_metric"]
        best_model = checkpoint["best_model"]
        _set_rng_state(checkpoint["rng"])

    for callback in callbacks:
        callback.on_train_start(state)
    use_amp = config.amp and device.type == "cuda"
    is_main = distributed is None or distributed.is_main

    while state.epoch < config.epochs:
        epoch = state.epoch + 1
        model.train()
        sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        totals: dict[str, float] = {}
        batches = tqdm(
            _batches(datasets.train, sampler, config.num_workers, device.type == "cuda"),
            total=len(sampler),
            desc=f"epoch {epoch}/{config.epochs}",
            disable=not (progress and is_main),
            leave=False,
        )
        for images, labels in batches:
            images, labels = images.to(device, non_blocking=True), torch.as_tensor(labels).to(device)
            if config.channels_last and device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                if distributed is None:
                    output = model(images)
                else:  # the classifier and the MPN see the global batch
                    output = step_model(images, gather=distributed.gather)
                    labels = distributed.gather_labels(labels)
                loss, parts = objective(output, labels)
            state.step += 1
            if not torch.isfinite(output.embeddings).all() or not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training diverged at step {state.step} (epoch {epoch}): the "
                    f"{'embeddings' if not torch.isfinite(output.embeddings).all() else 'loss'} became NaN "
                    "or infinite. Lower the learning rate (--lr) or check the input data."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # under DDP this also averages the gradients across processes
            optimizer.step()
            for name, value in parts.items():
                totals[name] = totals.get(name, 0.0) + value
            batches.set_postfix(loss=f"{loss.item():.3f}")
        scheduler.step()
        state.epoch = epoch

        val = evaluate(model, datasets.val, ks=(1, 2, 4, 8), batch_size=config.eval_batch_size)
        row = {"epoch": epoch, "step": state.step}
        row.update({f"train_{name}": value / len(sampler) for name, value in totals.items()})
        row.update({f"val_{name}": value for name, value in val.items() if name.startswith(("recall", "map"))})
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["seconds"] = round(time.perf_counter() - epoch_start, 3)
        state.history.append(row)
        if val["recall@1"] > state.best_metric:
            state.best_metric, state.best_epoch = val["recall@1"], epoch
            best_model = _model_state(model)
            if checkpoint_dir is not None and is_main:
                save_atomically(
                    {
                        "format": CHECKPOINT_FORMAT,
                        "config": config.to_dict(),
                        "model": best_model,
                        "epoch": epoch,
                        "num_classes": num_classes,
                        "val_metrics": val,
                    },
                    checkpoint_dir / "best.pt",
                )
        if checkpoint_dir is not None and is_main:
            save_atomically(
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": config.to_dict(),
                    "model": _model_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": state.epoch,
                    "step": state.step,
                    "history": state.history,
                    "best_epoch": state.best_epoch,
                    "best_metric": state.best_metric,
                    "best_model": best_model,
                    "num_classes": num_classes,
                    "rng": _rng_state(),
                },
                last_path,
            )
        for callback in callbacks:
            callback.on_epoch_end(state)

    model.load_state_dict(best_model)
    model.eval()
    best_row = state.history[state.best_epoch - 1] if state.best_epoch else {}
    val_metrics = {k[len("val_") :]: v for k, v in best_row.items() if k.startswith("val_")}
    test_metrics: dict[str, float] = {}
    if evaluate_test and is_main:
        test_metrics = evaluate_on_test(model, datasets, config, compute_nmi)
    return TrainResult(
        config=config,
        model=model,
        history=state.history,
        best_epoch=state.best_epoch,
        val_metrics=val_metrics,
        test_metrics=test_metrics,
        seconds=time.perf_counter() - start_time,
    )


def default_ks(dataset: str) -> tuple[int, ...]:
    """The K of Recall@K that the literature reports for each dataset."""
    return {"sop": (1, 10, 100, 1000), "inshop": (1, 10, 20, 30, 40, 50)}.get(dataset, (1, 2, 4, 8))


def evaluate_on_test(
    model: MetricLearningModel, datasets: Datasets, config: TrainConfig, compute_nmi: bool = False,
    refine_k: int = 0,
) -> dict[str, float]:
    """Test-class metrics with the dataset's usual K (query vs gallery for In-Shop)."""
    ks = default_ks(config.dataset)
    options = dict(compute_nmi=compute_nmi, batch_size=config.eval_batch_size, num_workers=config.num_workers,
                   seed=config.seed, refine_k=refine_k)
    if datasets.query is not None:
        return evaluate(model, datasets.query, ks, gallery=datasets.gallery, **options)
    return evaluate(model, datasets.test, ks, **options)


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[MetricLearningModel, TrainConfig]:
    """Rebuild the model saved in a ``best.pt`` / ``last.pt`` checkpoint (in eval mode)."""
    checkpoint = load_checkpoint(path, map_location)
    config = TrainConfig.from_dict(checkpoint["config"])
    # the weights come from the checkpoint: never fetch ImageNet weights for this
    model_config = dataclasses.replace(config.model_config(int(checkpoint["num_classes"])), pretrained=False)
    model = MetricLearningModel(model_config)
    model.load_state_dict(checkpoint["model"])
    return model.eval(), config


# ---------------------------------------------------------------------------------------------
# A cache of finished runs (notebooks share runs; a teacher can prepare them before class)
# ---------------------------------------------------------------------------------------------

# Bumped whenever the code changes what a configuration computes (e.g. the optimizer kernels).
CACHE_VERSION = 2
# Settings that change where or how fast a run computes, not what it computes.
_NOT_IN_CACHE_KEY = ("data_root", "device", "num_workers", "eval_batch_size")


def _cached_settings(config: TrainConfig | dict) -> dict:
    values = config.to_dict() if isinstance(config, TrainConfig) else config
    return {k: v for k, v in values.items() if k not in _NOT_IN_CACHE_KEY}


def cache_key(config: TrainConfig) -> str:
    """A stable name for a configuration's run (the thread count is part of it: CPU results
    depend on it, see runtime.py)."""
    from mpn_tutorial.runtime import thread_count

    settings = _cached_settings(config)
    settings["threads"] = thread_count()
    settings["cache_version"] = CACHE_VERSION
    text = json.dumps(settings, sort_keys=True, default=list)
    return f"{config.preset}-{config.loss}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def train_cached(
    config: TrainConfig,
    cache_dir: str | os.PathLike,
    callbacks: Sequence[Callback] = (),
    datasets: Datasets | None = None,
    progress: bool = True,
) -> TrainResult:
    """:func:`train`, or its stored result when the same configuration ran before.

    Training is deterministic, so a stored run is exactly what training again would give. The
    store holds the best model, its history and metrics, and the recordings of callbacks that
    support it (:class:`EmbeddingSnapshots`, :class:`AttentionCapture`); a callback whose
    recordings are missing makes the run train again (and the entry is then completed). Entries
    are written atomically under ``cache_dir``; delete the folder to start afresh.
    """
    path = Path(cache_dir) / f"{cache_key(config)}.pt"
    wanted = {callback.cache_key(): callback for callback in callbacks}
    entry = None
    if path.exists():
        try:
            entry = load_checkpoint(path)
        except ValueError:
            entry = None  # unreadable: train again and overwrite
    same_run = entry is not None and _cached_settings(entry["config"]) == _cached_settings(config)
    if same_run and set(wanted) <= set(entry["callbacks"]):
        for key, callback in wanted.items():
            callback.restore(entry["callbacks"][key])
        model = MetricLearningModel(dataclasses.replace(config.model_config(int(entry["num_classes"])),
                                                        pretrained=False))
        model.load_state_dict(entry["model"])
        return TrainResult(config, model.eval(), list(entry["history"]), int(entry["best_epoch"]),
                           dict(entry["val_metrics"]), dict(entry["test_metrics"]), float(entry["seconds"]))
    result = train(config, callbacks=list(callbacks), datasets=datasets, progress=progress)
    recorded = dict(entry["callbacks"]) if same_run else {}
    recorded.update({key: callback.recordings() for key, callback in wanted.items()})
    save_atomically(
        {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "model": _model_state(result.model),
            "num_classes": int(result.model.config.num_classes),
            "history": result.history,
            "best_epoch": result.best_epoch,
            "val_metrics": result.val_metrics,
            "test_metrics": result.test_metrics,
            "seconds": result.seconds,
            "callbacks": recorded,
        },
        path,
    )
    return result

