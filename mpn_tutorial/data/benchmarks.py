"""Readers of the four deep-metric-learning benchmarks, straight from their original archive files.

Each reader takes ``root`` = the folder its archive extracts to, reads the archive's own index files
in place (nothing is moved or written) and applies the literature's standard split into two disjoint
halves of the classes (each reader's docstring says which), so the test classes are never seen in training.

Every reader: ``transform`` (PIL RGB image -> tensor) defaults to ``ToTensor()``; ``len(ds)``;
``ds[i] -> (image (C, H, W) float tensor, int label)``; ``ds.labels`` (N,) int64, contiguous
``0..num_classes-1`` in the order of the archive's class ids; ``ds.num_classes``; ``ds.paths``
(absolute); ``ds.class_ids`` (the archive's class id of each label). Images are opened only in
``__getitem__``, but every listed file is checked to exist when the reader is built, so an incomplete
extraction fails at once, not hours into training.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from mpn_tutorial.errors import DatasetError, DatasetNotFoundError, UsageError
from mpn_tutorial.tools.registry import DATASETS


class _Record(NamedTuple):
    """One image as an index file lists it."""

    path: Path  # absolute image path
    class_id: Any  # the archive's class id (int) or item id (str), before relabelling
    line: int  # line (or entry) of the index file that lists the image, for error messages
    split: str


class BenchmarkDataset(torch.utils.data.Dataset):
    """What the four readers share: checks, relabelling, lazy image loading.

    A subclass sets the class attributes below and implements :meth:`_read_index`.
    """

    title: ClassVar[str]  # human name, for messages
    fetch_name: ClassVar[str]  # its key in mpn_tutorial.tools.registry.DATASETS
    layout: ClassVar[str]  # what a correct root holds, for messages
    index_files: ClassVar[tuple[str, ...]]  # relative to root; all must exist
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    LAST_TRAIN_CLASS: ClassVar[int]  # CUB and Cars only: classes 1..this train, the rest test

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 transform: Callable[[Image.Image], torch.Tensor] | None = None) -> None:
        if split not in self.splits:
            raise UsageError(f"{type(self).__name__}: split must be one of {self.splits}, got {split!r}")
        self.root = Path(root).expanduser().absolute()
        self.split = split
        self.transform = transform if transform is not None else transforms.ToTensor()
        self._check_root()
        records = self._read_index()
        own = [record for record in records if record.split == split]
        if not own:
            raise DatasetError(f"{self.title}: the index files in {self.root} list no image of split {split!r}")
        self._check_images_exist(own)
        # Sorted archive ids -> 0..C-1. The mapping spans every returned record, which for In-Shop
        # query/gallery means both of them: one shared mapping.
        self.class_ids: list = sorted({record.class_id for record in records})
        label_of = {class_id: label for label, class_id in enumerate(self.class_ids)}
        self.paths: list[Path] = [record.path for record in own]
        self._label_list = [label_of[record.class_id] for record in own]
        self.labels = torch.tensor(self._label_list, dtype=torch.int64)
        self.num_classes = len(self.class_ids)

    # -- what a subclass provides -------------------------------------------------------------

    def _read_index(self) -> list[_Record]:
        """Records of ``self.split`` and of any split sharing its label mapping."""
        raise NotImplementedError

    def _where(self, record: _Record) -> str:
        """Where ``record`` is listed, for error messages."""
        return f"line {record.line} of {self.root / self.index_files[0]}"

    # -- the dataset ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        """``(transform(RGB image), label)``; the image is read from disk now, not before."""
        path = self.paths[index]
        try:
            with Image.open(path) as file:
                image = file.convert("RGB")  # CUB and SOP contain some grayscale and CMYK images
        except (OSError, SyntaxError, ValueError) as exc:  # what PIL raises for bad or truncated files
            raise DatasetError(
                f"{self.title}: cannot read image {path} (item {index} of split {self.split!r}): {exc}. "
                "The file is truncated or not an image; extract it again from the original archive."
            ) from exc
        return self.transform(image), self._label_list[index]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root='{self.root}', split='{self.split}'): "
            f"{len(self):,} images of {self.num_classes:,} classes"
        )

    # -- checks and parsing helpers -------------------------------------------------------------

    def _how_to_get(self) -> str:
        folder = DATASETS[self.fetch_name].folder
        return (
            f"To obtain it run `python -m mpn_tutorial fetch {self.fetch_name} --root DIR` (the reader's "
            f"root is then DIR/{folder}), or see data/README.md."
        )

    def _check_root(self) -> None:
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"{self.title} not found: {self.root} is not a folder. root must be the folder extracted "
                f"from the archive, holding {self.layout}. {self._how_to_get()}"
            )
        for relative in self.index_files:
            if not (self.root / relative).is_file():
                raise DatasetNotFoundError(
                    f"{self.title}: {self.root / relative} is missing. root must be the folder holding "
                    f"{self.layout}.{self._nearby_root_hint()} {self._how_to_get()}"
                )

    def _nearby_root_hint(self) -> str:
        """A common slip is passing the folder *above* the dataset: look one level down."""
        try:
            children = sorted(islice((child for child in self.root.iterdir() if child.is_dir()), 1000))
        except OSError:  # unreadable folder: no hint, the main message still stands
            return ""
        for child in children:
            if all((child / relative).is_file() for relative in self.index_files):
                return f" Did you mean root='{child}'?"
        return ""

    def _check_images_exist(self, records: list[_Record]) -> None:
        # One stat per image: cheap next to an epoch, and it turns "crashed after 3 hours" into an
        # error at construction time.
        missing = [record for record in records if not record.path.is_file()]
        if missing:
            first = missing[0]
            raise DatasetNotFoundError(
                f"{self.title}: {len(missing):,} of the {len(records):,} images of split {self.split!r} are "
                f"missing, e.g. {first.path} ({self._where(first)}). Extract the complete archive into "
                f"{self.root} without moving files. {self._how_to_get()}"
            )

    def _lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """``(line number, stripped text)`` of the non-blank lines of a text index file."""
        try:
            with open(path, encoding="utf-8") as file:
                for number, line in enumerate(file, start=1):
                    if text := line.strip():
                        yield number, text
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{self.title}: {path} is not a text file ({exc}); extract it again") from exc

    def _error_at(self, path: Path, line: int, problem: str) -> DatasetError:
        return DatasetError(
            f"{self.title}: {path} line {line}: {problem}. The file is damaged or from another release; "
            "extract it again from the original archive (see data/README.md)."
        )

    def _malformed(self, path: Path, line: int, text: str, expected: str) -> DatasetError:
        return self._error_at(path, line, f"expected '{expected}', got {text!r}")

    def _add_if_own_split(self, records: list[_Record], path: Path, class_id: int, line: int) -> None:
        """CUB and Cars split by class: ``1..LAST_TRAIN_CLASS`` train, the rest test."""
        split = "train" if class_id <= self.LAST_TRAIN_CLASS else "test"
        if split == self.split:
            records.append(_Record(path, class_id, line, split))

    def _read_id_table(self, name: str, expected: str, parse: Callable[[str], Any]) -> dict[int, tuple[int, Any]]:
        """``<id> <value>`` lines -> ``{id: (line number, parse(value))}`` (CUB's format)."""
        path = self.root / name
        table: dict[int, tuple[int, Any]] = {}
        for number, text in self._lines(path):
            fields = text.split(maxsplit=1)
            try:
                key, value = int(fields[0]), parse(fields[1])
            except (IndexError, ValueError):
                raise self._malformed(path, number, text, expected) from None
            if key in table:
                raise self._error_at(path, number, f"id {key} already appears on line {table[key][0]}")
            table[key] = (number, value)
        return table


class CUB200(BenchmarkDataset):
    """CUB-200-2011 birds: 11,788 images, 200 species; classes 1-100 train, 101-200 test.

    Args:
        root: the folder holding ``images.txt``, ``image_class_labels.txt`` and ``images/``
            (``CUB_200_2011/`` inside the archive).
        split: ``"train"`` (5,864 images, 100 classes) or ``"test"`` (5,924 images, 100 classes).
    """

    title = "CUB-200-2011"
    fetch_name = "cub"
    layout = "images.txt, image_class_labels.txt and the images/ folder"
    index_files = ("images.txt", "image_class_labels.txt")
    NUM_CLASSES = 200
    LAST_TRAIN_CLASS = 100

    def _read_index(self) -> list[_Record]:
        paths = self._read_id_table("images.txt", "<image_id> <relative path>", str)
        classes = self._read_id_table("image_class_labels.txt", "<image_id> <class_id>", int)
        labels_path = self.root / "image_class_labels.txt"
        records = []
        for image_id, (line, relative) in paths.items():
            if image_id not in classes:
                raise self._error_at(self.root / "images.txt", line, f"image {image_id} has no class in {labels_path}")
            class_line, class_id = classes[image_id]
            if not 1 <= class_id <= self.NUM_CLASSES:
                raise self._error_at(labels_path, class_line, f"class {class_id} is outside 1..{self.NUM_CLASSES}")
            self._add_if_own_split(records, self.root / "images" / relative, class_id, line)
        return records


class Cars196(BenchmarkDataset):
    """Cars196 (Stanford Cars): 16,185 images, 196 car models; classes 1-98 train, 99-196 test.

    The split is by class, as in metric learning; the archive's own ``test`` flag (a per-image
    classification split) is ignored.

    Args:
        root: the folder holding ``cars_annos.mat`` and ``car_ims/``.
        split: ``"train"`` (8,054 images, 98 classes) or ``"test"`` (8,131 images, 98 classes).
    """

    title = "Cars196"
    fetch_name = "cars"
    layout = "cars_annos.mat and the car_ims/ folder"
    index_files = ("cars_annos.mat",)
    NUM_CLASSES = 196
    LAST_TRAIN_CLASS = 98

    def _where(self, record: _Record) -> str:
        return f"entry {record.line} of the annotations in {self.root / 'cars_annos.mat'}"

    def _read_index(self) -> list[_Record]:
        from scipy.io import loadmat  # imported here: only this reader needs scipy

        path = self.root / "cars_annos.mat"
        try:
            # squeeze_me: each struct field becomes a plain scalar (str / int) instead of a 1x1 array
            mat = loadmat(path, squeeze_me=True)
        except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError... for a bad file
            raise DatasetError(f"{self.title}: cannot read {path} as a MATLAB file ({exc}); download it again") from exc
        annotations = mat.get("annotations")
        fields = getattr(getattr(annotations, "dtype", None), "names", None) or ()
        if not {"relative_im_path", "class"} <= set(fields):
            raise DatasetError(
                f"{self.title}: {path} lacks the struct array 'annotations' with fields relative_im_path "
                f"and class (variables found: {sorted(k for k in mat if not k.startswith('__'))}); is it "
                "cars_annos.mat of the full release (not cars_train_annos.mat)?"
            )
        records = []
        for entry_number, entry in enumerate(np.atleast_1d(annotations), start=1):
            relative, raw_class = entry["relative_im_path"], entry["class"]
            try:
                class_id = int(raw_class)
            except (TypeError, ValueError):
                class_id = 0
            if not isinstance(relative, str) or not relative or not 1 <= class_id <= self.NUM_CLASSES:
                raise DatasetError(
                    f"{self.title}: entry {entry_number} of the annotations in {path} is malformed: expected "
                    f"a relative_im_path like 'car_ims/000001.jpg' and a class in 1..{self.NUM_CLASSES}, "
                    f"got {relative!r} and {raw_class!r}; download the file again"
                )
            self._add_if_own_split(records, self.root / relative, class_id, entry_number)
        return records


class StanfordOnlineProducts(BenchmarkDataset):
    """Stanford Online Products: 120,053 images of 22,634 products (classes) from eBay.

    Args:
        root: the folder holding ``Ebay_train.txt``, ``Ebay_test.txt`` and the ``*_final/`` folders
            (``Stanford_Online_Products/`` inside the archive).
        split: ``"train"`` (59,551 images, 11,318 classes) or ``"test"`` (60,502 images, 11,316 classes).
    """

    title = "Stanford Online Products"
    fetch_name = "sop"
    layout = "Ebay_train.txt, Ebay_test.txt and the category folders (bicycle_final/, ...)"
    index_files = ("Ebay_train.txt", "Ebay_test.txt")
    HEADER = ("image_id", "class_id", "super_class_id", "path")

    def _where(self, record: _Record) -> str:
        return f"line {record.line} of {self.root / f'Ebay_{self.split}.txt'}"

    def _read_index(self) -> list[_Record]:
        path = self.root / f"Ebay_{self.split}.txt"
        lines = self._lines(path)
        number, header = next(lines, (1, ""))
        if tuple(header.split()) != self.HEADER:
            raise self._malformed(path, number, header, " ".join(self.HEADER))
        records = []
        for number, text in lines:
            fields = text.split(maxsplit=3)
            try:
                class_id, relative = int(fields[1]), fields[3]
            except (IndexError, ValueError):
                raise self._malformed(path, number, text, "<image_id> <class_id> <super_class_id> <path>") from None
            records.append(_Record(self.root / relative, class_id, number, self.split))
        return records


class InShop(BenchmarkDataset):
    """In-Shop Clothes Retrieval (DeepFashion): 52,712 images of 7,982 clothing items.

    ``train``: 25,882 images of 3,997 items. The images of the other 3,985 items form a ``query`` set
    (14,218) and a ``gallery`` set (12,612): evaluation retrieves, for each query, gallery images of the
    same item. Query and gallery share one label mapping over the items of both (``num_classes`` is its
    size), so an item has the same label in both. Item ids (``id_00000001``) are zero-padded, so sorting
    them as text is numeric.

    Args:
        root: the folder holding ``Eval/list_eval_partition.txt`` and ``Img/`` (the index's image
            names, ``img/WOMEN/...``, are relative to ``Img/``).
        split: ``"train"``, ``"query"`` or ``"gallery"``.
    """

    title = "In-Shop Clothes Retrieval"
    fetch_name = "inshop"
    layout = "Eval/list_eval_partition.txt and the Img/ folder (Img/img/MEN, Img/img/WOMEN)"
    index_files = ("Eval/list_eval_partition.txt",)
    splits = ("train", "query", "gallery")
    HEADER = ("image_name", "item_id", "evaluation_status")

    def _read_index(self) -> list[_Record]:
        path = self.root / self.index_files[0]
        lines = self._lines(path)
        number, count_text = next(lines, (1, ""))
        try:
            announced = int(count_text)
        except ValueError:
            raise self._malformed(path, number, count_text, "<number of images>") from None
        number, header = next(lines, (2, ""))
        if tuple(header.split()) != self.HEADER:
            raise self._malformed(path, number, header, " ".join(self.HEADER))
        # query and gallery are labelled together; train alone.
        group = ("train",) if self.split == "train" else ("query", "gallery")
        listed = 0
        records = []
        for number, text in lines:
            fields = text.split()
            if len(fields) != 3 or fields[2] not in self.splits:
                raise self._malformed(path, number, text, "<image_name> <item_id> <train|query|gallery>")
            listed += 1
            name, item_id, status = fields
            if status in group:
                records.append(_Record(self.root / "Img" / name, item_id, number, status))
        if listed != announced:
            raise self._error_at(path, 1, f"announces {announced:,} images but the file lists {listed:,} (truncated?)")
        return records
