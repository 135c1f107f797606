"""Observers of training: :func:`~mpn_tutorial.training.train` calls ``on_train_start(state)`` once
and ``on_epoch_end(state)`` after every epoch with the live :class:`TrainState`; they never change the
run. The recorders' ``state_dict()`` holds plain arrays (the notebooks' run store keeps them).
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mpn_tutorial.config import TrainConfig
from mpn_tutorial.data.build import Datasets
from mpn_tutorial.evaluation import EVAL_BATCH_SIZE, batch_attention, embed_dataset, evaluate
from mpn_tutorial.models import MetricLearningModel
from mpn_tutorial.tools.atomic import write_atomically


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


class Callback:
    """Hooks called by :func:`~mpn_tutorial.training.train`; override the ones you need."""

    def on_train_start(self, state: TrainState) -> None:  # noqa: B027 - optional hook
        pass

    def on_epoch_end(self, state: TrainState) -> None:  # noqa: B027 - optional hook
        pass


class EmbeddingSnapshots(Callback):
    """Embeddings of ``dataset`` before training (epoch 0) and after every ``every`` epochs (UMAP):
    ``snapshots``: list of ``(epoch, (N, D) float32 numpy array)``; ``labels``: (N,) numpy.
    Evaluation-mode forward passes use no random numbers: taking snapshots never changes the run."""

    def __init__(self, dataset, every: int = 1, batch_size: int = EVAL_BATCH_SIZE) -> None:
        self.dataset, self.every, self.batch_size = dataset, every, batch_size
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

    def state_dict(self) -> dict:
        return {"epochs": [epoch for epoch, _ in self.snapshots],
                "embeddings": [torch.from_numpy(e) for _, e in self.snapshots],
                "labels": torch.from_numpy(self.labels)}

    def load_state_dict(self, recordings: dict) -> None:
        self.snapshots = [(int(epoch), embeddings.numpy())
                          for epoch, embeddings in zip(recordings["epochs"], recordings["embeddings"])]
        self.labels = recordings["labels"].numpy()


class AttentionCapture(Callback):
    """Attention of the MPN on one fixed batch, before training and after every epoch (eval mode):
    ``snapshots``: list of ``(epoch, (num_layers, num_heads, N, N) array)`` (``evaluation.batch_attention``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, torch.as_tensor(labels)
        self.snapshots: list[tuple[int, np.ndarray]] = []

    def on_train_start(self, state: TrainState) -> None:
        if state.epoch == 0:
            self.snapshots.append((0, batch_attention(state.model, self.images, self.labels)))

    def on_epoch_end(self, state: TrainState) -> None:
        self.snapshots.append((state.epoch, batch_attention(state.model, self.images, self.labels)))

    def state_dict(self) -> dict:
        return {"epochs": [epoch for epoch, _ in self.snapshots],
                "attention": [torch.from_numpy(a) for _, a in self.snapshots]}

    def load_state_dict(self, recordings: dict) -> None:
        self.snapshots = [(int(epoch), attention.numpy())
                          for epoch, attention in zip(recordings["epochs"], recordings["attention"])]


class EpochEvaluation(Callback):
    """Retrieval metrics of ``dataset`` after every epoch: ``results`` is a list of ``(epoch, {metric:
    value})``. E.g. the test classes, to measure what choosing the epoch on them would add: an observer
    only, the run still chooses its best epoch on the validation classes."""

    def __init__(self, dataset, ks=(1,), batch_size: int = EVAL_BATCH_SIZE) -> None:
        self.dataset, self.ks, self.batch_size = dataset, tuple(ks), batch_size
        self.results: list[tuple[int, dict[str, float]]] = []

    def on_epoch_end(self, state: TrainState) -> None:
        measured = evaluate(state.model, self.dataset, ks=self.ks, batch_size=self.batch_size)
        self.results.append((state.epoch, {k: v for k, v in measured.items() if isinstance(v, float)}))

    def state_dict(self) -> dict:
        return {"epochs": [epoch for epoch, _ in self.results], "metrics": [m for _, m in self.results]}

    def load_state_dict(self, recordings: dict) -> None:
        self.results = [(int(epoch), dict(m)) for epoch, m in zip(recordings["epochs"], recordings["metrics"])]


def flatten(row: dict) -> dict:
    """A history row as columns: nested groups become ``group_name`` (``{"val": {"recall@1": x}}`` ->
    ``{"val_recall@1": x}``)."""
    columns = {}
    for name, value in row.items():
        if isinstance(value, dict):
            columns.update({f"{name}_{key}": inner for key, inner in value.items()})
        else:
            columns[name] = value
    return columns


class CSVLogger(Callback):
    """Writes the run's history, one row per epoch, to a CSV file (columns: :func:`flatten`). The whole
    file is rewritten (atomically) after every epoch, so it always holds exactly this run's epochs: a
    resumed run continues it, and a killed run never leaves a half-written row or one its checkpoint lacks."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def on_epoch_end(self, state: TrainState) -> None:
        rows = [flatten(row) for row in state.history]
        names = list(dict.fromkeys(name for row in rows for name in row))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
        write_atomically(self.path, lambda file: file.write(text.getvalue().encode()))


class TensorBoardLogger(Callback):
    """Logs each epoch's history row to TensorBoard (needs the ``tensorboard`` package). The event files
    are created when training starts: a run that is refused (its folder holds another run) writes nothing."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        from torch.utils.tensorboard import SummaryWriter  # ImportError when tensorboard is missing

        self.log_dir, self.make_writer, self.writer = str(log_dir), SummaryWriter, None

    def on_train_start(self, state: TrainState) -> None:
        self.writer = self.make_writer(self.log_dir)

    def on_epoch_end(self, state: TrainState) -> None:
        row = state.history[-1]
        for name, value in row.items():  # groups become TensorBoard sections: "val/recall@1", "attention/share"
            values = value if isinstance(value, dict) else {None: value}
            for key, number in values.items():
                if name not in ("epoch", "step") and isinstance(number, (int, float)):
                    self.writer.add_scalar(name if key is None else f"{name}/{key}", number, row["epoch"])
        self.writer.flush()
