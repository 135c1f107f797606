"""The P×K batch sampler: every batch holds P classes with K samples each, so that the losses (and the
message passing) always find positives (same class) and negatives (other classes) inside the batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mpn_tutorial.errors import UsageError


class PKSampler(torch.utils.data.Sampler[list[int]]):
    """Yields lists of ``classes_per_batch * samples_per_class`` dataset indices.

    Each batch: P distinct classes, then K indices from each, grouped by class (``batch[p*K:(p+1)*K]``
    share one label). A class with fewer than K samples is drawn **with replacement** (the batch shape
    never changes). The classes come from a shuffled cycle over all classes, reshuffled each time it
    runs out, so every class appears about equally often over an epoch of ``len(labels) // (P*K)``
    batches (about as many samples as the dataset holds).

    The batches of epoch ``e`` depend only on ``(seed, e)``: call :meth:`set_epoch` before each
    epoch (the training loop does); this makes resuming from a checkpoint exact.

    Args:
        labels: (N,) class label of every sample in the dataset.
        classes_per_batch: P, at least 2 (a batch needs negatives).
        samples_per_class: K, at least 2 (a batch needs positives).
        num_batches: batches per epoch (default ``len(labels) // (P*K)``, at least 1).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        classes_per_batch: int,
        samples_per_class: int,
        seed: int = 0,
        num_batches: int | None = None,
    ) -> None:
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise UsageError(f"labels must be a non-empty 1-D sequence, got shape {labels.shape}")
        if classes_per_batch < 2 or samples_per_class < 2:
            raise UsageError(
                "a P×K batch needs at least 2 classes (for negatives) and 2 samples per class (for "
                f"positives); got classes_per_batch={classes_per_batch}, samples_per_class={samples_per_class}"
            )
        classes, inverse = np.unique(labels, return_inverse=True)
        if len(classes) < classes_per_batch:
            raise UsageError(
                f"classes_per_batch={classes_per_batch} but the labels hold only {len(classes)} classes; "
                "lower classes_per_batch or use a dataset with more classes"
            )
        self.classes_per_batch = classes_per_batch
        self.samples_per_class = samples_per_class
        self.batch_size = classes_per_batch * samples_per_class
        self.seed = seed
        self.epoch = 0
        self.num_batches = max(1, len(labels) // self.batch_size) if num_batches is None else num_batches
        if self.num_batches < 1:
            raise UsageError(f"num_batches must be at least 1, got {num_batches}")
        order = np.argsort(inverse, kind="stable")
        boundaries = np.cumsum(np.bincount(inverse))[:-1]
        self._indices_per_class = np.split(order, boundaries)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        num_classes = len(self._indices_per_class)
        cycle: list[int] = []
        for _ in range(self.num_batches):
            chosen: list[int] = []
            while len(chosen) < self.classes_per_batch:
                if not cycle:
                    cycle = rng.permutation(num_classes).tolist()
                candidate = cycle.pop()
                if candidate not in chosen:
                    chosen.append(candidate)
                # a class already in this batch (possible only at a reshuffle) is simply skipped;
                # it comes again in the next cycle
            batch: list[int] = []
            for class_index in chosen:
                members = self._indices_per_class[class_index]
                replace = len(members) < self.samples_per_class
                batch.extend(rng.choice(members, self.samples_per_class, replace=replace).tolist())
            yield batch
