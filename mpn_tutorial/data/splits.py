"""Class-level splits and subsets. Metric learning is evaluated on classes never seen in training, so
model selection is too: the validation split holds some *classes* of the training half, never test classes
and never images of classes the model trains on.
"""

from __future__ import annotations

import numpy as np
import torch

from mpn_tutorial.errors import UsageError


def carve_validation_classes(num_classes: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted class ids (of ``0..num_classes-1``) held out for validation: ``round(fraction *
    num_classes)`` of them, but at least 2 and leaving at least 2 to train on (a retrieval query
    needs a negative; a small test tree of 12 classes still gets a validation split)."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise UsageError(f"val_fraction must be between 0 and 1 (a share of the training classes), got {fraction!r}")
    count = min(num_classes - 2, max(2, int(round(fraction * num_classes))))
    if count < 2:
        raise UsageError(f"{num_classes} training classes are too few to carve a validation split from (at least 4)")
    return np.sort(np.random.default_rng(seed).permutation(num_classes)[:count])


def split_classes(num_classes: int, seed: int, val_fraction: float = 0.2) -> np.ndarray:
    """For a dataset without a given split (the glyphs): a random half of the classes for testing, and
    validation classes carved from the other half as for the benchmarks. Returns (num_classes,) int64
    with 0 = train, 1 = val, 2 = test."""
    order = np.random.default_rng(seed).permutation(num_classes)
    test, training_half = order[: num_classes // 2], order[num_classes // 2 :]
    split = np.zeros(num_classes, dtype=np.int64)
    split[test] = 2
    split[training_half[carve_validation_classes(len(training_half), val_fraction, seed)]] = 1
    return split


class ClassSubset(torch.utils.data.Dataset):
    """The samples of some classes of a dataset, relabelled contiguously ``0..len(classes)-1``.

    ``dataset`` must have ``labels`` (a (N,) int tensor) and ``__getitem__ -> (image, label)``.
    """

    def __init__(self, dataset, classes) -> None:
        self.dataset = dataset
        classes = np.unique(np.asarray(classes, dtype=np.int64))
        original = np.asarray(dataset.labels)
        self.indices = np.flatnonzero(np.isin(original, classes))
        relabel = np.full(int(original.max()) + 1, -1, dtype=np.int64)
        relabel[classes] = np.arange(len(classes))
        self.labels = torch.from_numpy(relabel[original[self.indices]])
        self.num_classes = len(classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, _ = self.dataset[int(self.indices[index])]
        return image, int(self.labels[index])

    @property
    def in_memory(self) -> bool:
        """True when the underlying dataset holds its images in memory (then :meth:`batch` works)."""
        return bool(getattr(self.dataset, "in_memory", False))

    @property
    def images(self) -> torch.Tensor | None:
        """The subset's images (N, H, W) for in-memory datasets, else None."""
        return self.dataset.images[torch.from_numpy(self.indices)] if self.in_memory else None

    def batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of many indices at once (in-memory datasets only)."""
        if not self.in_memory:
            raise UsageError(f"{type(self.dataset).__name__} loads images one by one; use dataset[i]")
        images, _ = self.dataset.batch(self.indices[np.asarray(indices)])
        return images, self.labels[torch.as_tensor(indices)]
