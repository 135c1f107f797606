"""The datasets of a run (:func:`build_datasets` of its :class:`DataConfig`), and batches from them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from mpn_tutorial.data.sampler import PKSampler
from mpn_tutorial.errors import UsageError
from mpn_tutorial.tools.registry import DATASETS
from mpn_tutorial.tools.settings import setting

DATASET_NAMES = ("glyphs", "cub", "cars", "sop", "inshop")


@dataclass
class DataConfig:
    """The data part of a run's settings (:class:`~mpn_tutorial.config.TrainConfig` extends it)."""

    dataset: str = setting("glyphs", "the dataset: the offline glyphs, or a benchmark (see data/README.md)",
                           choices=DATASET_NAMES)
    data_root: str = setting("data", "dataset folder (see data/README.md); the same data in another folder is the "
                             "same run", machinery=True, path="folder", aliases=("root",))
    image_size: int = setting(32, "crop size in pixels (glyphs: 8-64, rendered at 64; a ResNet: at least 32, 227 "
                              "published)", low=8)
    val_fraction: float = setting(0.2, "share of the training classes held out for validation", above=0, below=1,
                                  hint="e.g. 0.2")
    data_seed: int = setting(0, "glyph rendering and class split (the training run's seed is --seed)", low=0)


DATA_FIELDS = tuple(setting.name for setting in fields(DataConfig))


@dataclass
class Datasets:
    """train / val are class-disjoint parts of the training classes; test (or query + gallery) the rest."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    test: torch.utils.data.Dataset | None = None
    query: torch.utils.data.Dataset | None = None
    gallery: torch.utils.data.Dataset | None = None

    @property
    def evaluation(self) -> torch.utils.data.Dataset:
        """The test-class dataset retrieval is measured on (In-Shop: the query set)."""
        return self.test if self.test is not None else self.query


def build_datasets(settings: DataConfig) -> Datasets:
    """The datasets a run trains and evaluates on (the glyphs are generated and cached on first use)."""
    if settings.dataset == "glyphs":
        from mpn_tutorial.data.glyphs import GlyphDataset

        def glyphs(split: str) -> GlyphDataset:
            return GlyphDataset(split, root=settings.data_root, seed=settings.data_seed,
                                image_size=settings.image_size, val_fraction=settings.val_fraction)

        return Datasets(train=glyphs("train"), val=glyphs("val"), test=glyphs("test"))

    from mpn_tutorial.data import benchmarks, transforms
    from mpn_tutorial.data.splits import ClassSubset, carve_validation_classes

    if settings.dataset not in DATASET_NAMES:
        raise UsageError(f"dataset must be one of {DATASET_NAMES}, got {settings.dataset!r}")
    reader = getattr(benchmarks, DATASETS[settings.dataset].reader)  # e.g. benchmarks.CUB200 for "cub"
    nested = Path(settings.data_root) / DATASETS[settings.dataset].folder  # where fetch puts it: data/CUB_200_2011
    root = nested if nested.is_dir() else Path(settings.data_root)
    test_transform = transforms.test_transform(settings.image_size)  # deterministic: one serves every view
    train_view = reader(root, "train", transform=transforms.train_transform(settings.image_size))
    eval_view = reader(root, "train", transform=test_transform)
    val_classes = carve_validation_classes(train_view.num_classes, settings.val_fraction, settings.data_seed)
    train_classes = np.setdiff1d(np.arange(train_view.num_classes), val_classes)
    datasets = Datasets(train=ClassSubset(train_view, train_classes), val=ClassSubset(eval_view, val_classes))
    if settings.dataset == "inshop":
        datasets.query = reader(root, "query", transform=test_transform)
        datasets.gallery = reader(root, "gallery", transform=test_transform)
    else:
        datasets.test = reader(root, "test", transform=test_transform)
    return datasets


def iterate_batches(
    dataset, index_lists: Iterable[Sequence[int]], num_workers: int = 0, pin_memory: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) for each list of indices; one indexing operation for in-memory datasets."""
    if getattr(dataset, "in_memory", False):
        for indices in index_lists:
            yield dataset.batch(indices)
        return
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=index_lists, num_workers=num_workers,
                                         pin_memory=pin_memory)
    for images, labels in loader:
        yield images, torch.as_tensor(labels)


def sample_batch(
    dataset, classes_per_batch: int = 8, samples_per_class: int = 6, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """One P×K batch of any dataset of this package, as the training loop would draw it: images
    (B, C, H, W) and labels (B,)."""
    indices = next(iter(PKSampler(dataset.labels, classes_per_batch, samples_per_class, seed=seed, num_batches=1)))
    if getattr(dataset, "in_memory", False):
        return dataset.batch(indices)
    items = [dataset[int(i)] for i in indices]
    return torch.stack([image for image, _ in items]), torch.tensor([label for _, label in items])
