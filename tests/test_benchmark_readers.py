"""The benchmark readers, on tiny fake trees written in each archive's exact file formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from mpn_tutorial.data import benchmarks
from mpn_tutorial.data import transforms as recipe  # not `import test_transform`: pytest would collect it
from mpn_tutorial.data.benchmarks import (
    CUB200,
    Cars196,
    DatasetError,
    DatasetNotFoundError,
    InShop,
    StanfordOnlineProducts,
)
from mpn_tutorial.tools.registry import DATASETS

# ------------------------------------------------------------------------------------------------
# Fake archive trees
# ------------------------------------------------------------------------------------------------


def write_jpeg(path: Path, shade: int = 120, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = (shade, 255 - shade, 60) if mode == "RGB" else shade
    Image.new(mode, (12, 10), color).save(path, "JPEG")


# Listed out of order, and spanning the train/test boundary (100 | 101), so the tests see both the
# split rule and the sort by class id.
CUB_CLASSES = (150, 1, 200, 100, 101, 2)


def make_cub(root: Path, classes=CUB_CLASSES, per_class: int = 2) -> Path:
    images, labels = [], []
    for class_id in classes:
        for k in range(per_class):
            image_id = len(images) + 1
            relative = f"{class_id:03d}.Bird_{class_id}/Bird_{class_id}_{k}.jpg"
            write_jpeg(root / "images" / relative, shade=class_id)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    return root


CARS_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")


def write_cars_annos(path: Path, entries: list[tuple[str, int, int]]) -> None:
    """``entries``: (relative_im_path, class, test flag), stored as MATLAB stores cars_annos.mat."""
    annotations = np.zeros((1, len(entries)), dtype=[(name, "O") for name in CARS_FIELDS])
    for i, (relative, class_id, test) in enumerate(entries):
        box = [np.array([[v]], dtype=np.uint16) for v in (1, 2, 11, 9)]
        annotations[0, i] = (
            np.array([relative]),
            *box,
            np.array([[class_id]], dtype=np.uint8),
            np.array([[test]], dtype=np.uint8),
        )
    class_names = np.array(["AM General Hummer SUV 2000", "Acura RL Sedan 2012"], dtype=object)
    scipy.io.savemat(path, {"annotations": annotations, "class_names": class_names})


def make_cars(root: Path, classes=(99, 1, 196, 98, 50), per_class: int = 2) -> Path:
    entries = []
    for class_id in classes:
        for _ in range(per_class):
            relative = f"car_ims/{len(entries) + 1:06d}.jpg"
            write_jpeg(root / relative, shade=class_id)
            # the archive's own per-image test flag, deliberately unrelated to the class split
            entries.append((relative, class_id, len(entries) % 2))
    root.mkdir(parents=True, exist_ok=True)
    write_cars_annos(root / "cars_annos.mat", entries)
    return root


def make_sop(root: Path) -> Path:
    splits = {"train": (3, 1, 2), "test": (6, 4, 5)}  # product (class) ids, listed out of order
    image_id = 0
    for split, classes in splits.items():
        lines = ["image_id class_id super_class_id path"]
        for class_id in classes:
            for k in range(2):
                image_id += 1
                relative = f"bicycle_final/11108512287{class_id}_{k}.JPG"
                write_jpeg(root / relative, shade=20 * class_id)
                lines.append(f"{image_id} {class_id} 1 {relative}")
        (root / f"Ebay_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


INSHOP_TRAIN_ITEMS = ("id_00000005", "id_00000001", "id_00000003")
INSHOP_TEST_ITEMS = ("id_00000007", "id_00000002", "id_00000004")


def make_inshop(root: Path, extra_rows: tuple[str, ...] = ()) -> Path:
    rows = []

    def add(item: str, view: str, status: str) -> None:
        name = f"img/WOMEN/Dresses/{item}/{view}.jpg"
        write_jpeg(root / "Img" / name, shade=int(item[-2:]) * 20)
        # the real file pads its columns with runs of spaces
        rows.append(f"{name:<60}{item:<20}{status}")

    for item in INSHOP_TRAIN_ITEMS:
        add(item, "01_1_front", "train")
        add(item, "01_2_side", "train")
    for item in INSHOP_TEST_ITEMS:
        add(item, "01_1_front", "query")
        add(item, "01_2_side", "query")
        add(item, "01_3_back", "gallery")
    add("id_00000009", "01_1_front", "gallery")  # an item only the gallery holds
    rows += extra_rows
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n"
    (root / "Eval" / "list_eval_partition.txt").write_text(text)
    return root


MAKERS = {CUB200: make_cub, Cars196: make_cars, StanfordOnlineProducts: make_sop, InShop: make_inshop}
READERS = list(MAKERS)


def fake_root(tmp_path: Path, reader: type) -> Path:
    return MAKERS[reader](tmp_path / reader.__name__)


def label_of_class(dataset) -> dict:
    """archive class id -> label, read back from the dataset's own labels."""
    return {dataset.class_ids[label]: label for label in dataset.labels.tolist()}


# ------------------------------------------------------------------------------------------------
# Splits and labels
# ------------------------------------------------------------------------------------------------


def test_cub_trains_on_classes_1_to_100_and_tests_on_101_to_200(tmp_path):
    root = make_cub(tmp_path)
    train, test = CUB200(root, "train"), CUB200(root, "test")
    assert train.class_ids == [1, 2, 100] and train.num_classes == 3 and len(train) == 6
    assert test.class_ids == [101, 150, 200] and test.num_classes == 3 and len(test) == 6


def test_labels_are_contiguous_and_ordered_by_archive_class_id(tmp_path):
    train = CUB200(make_cub(tmp_path), "train")
    assert sorted(set(train.labels.tolist())) == [0, 1, 2]
    for path, label in zip(train.paths, train.labels.tolist(), strict=True):
        class_id = int(path.parent.name.split(".")[0])  # CUB folders are named "<class>.<Species>"
        assert train.class_ids[label] == class_id


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_labels_are_an_int64_tensor_with_one_label_per_image(tmp_path, reader):
    dataset = reader(fake_root(tmp_path, reader), "train")
    assert dataset.labels.dtype == torch.int64
    assert dataset.labels.shape == (len(dataset),)
    assert dataset.labels.min() == 0 and dataset.labels.max() == dataset.num_classes - 1


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_an_item_is_an_image_tensor_and_an_int_label(tmp_path, reader):
    dataset = reader(fake_root(tmp_path, reader), "train")
    image, label = dataset[len(dataset) - 1]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert image.shape == (3, 10, 12)  # (C, H, W) of the 12x10 fake JPEGs, default ToTensor
    assert isinstance(label, int) and label == int(dataset.labels[-1])


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_paths_are_absolute_and_inside_root(tmp_path, reader):
    root = fake_root(tmp_path, reader)
    dataset = reader(root, "train")
    assert len(dataset.paths) == len(dataset)
    assert all(path.is_absolute() and root.absolute() in path.parents for path in dataset.paths)


def test_grayscale_images_are_converted_to_rgb(tmp_path):
    root = make_cub(tmp_path)
    dataset = CUB200(root, "train")
    write_jpeg(dataset.paths[0], mode="L")
    image, _ = dataset[0]
    assert image.shape[0] == 3


def test_the_transform_is_applied_to_the_rgb_image(tmp_path):
    root = make_cub(tmp_path)
    evaluation = CUB200(root, "test", transform=recipe.test_transform(image_size=32, resize=40))
    training = CUB200(root, "train", transform=recipe.train_transform(image_size=24))
    assert evaluation[0][0].shape == (3, 32, 32)
    assert training[0][0].shape == (3, 24, 24)


def test_images_are_opened_only_when_an_item_is_read(tmp_path, monkeypatch):
    root = make_cub(tmp_path)
    opened = []
    real_open = Image.open
    monkeypatch.setattr(
        benchmarks.Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path)
    )
    dataset = CUB200(root, "train")
    assert opened == []
    dataset[3]
    assert opened == [dataset.paths[3]]


def test_cars_splits_by_class_and_ignores_the_archive_test_flag(tmp_path):
    root = make_cars(tmp_path)
    train, test = Cars196(root, "train"), Cars196(root, "test")
    assert train.class_ids == [1, 50, 98] and len(train) == 6
    assert test.class_ids == [99, 196] and len(test) == 4
    assert train.paths[0].parent == root / "car_ims"


def test_sop_reads_each_split_file_and_relabels_product_ids(tmp_path):
    root = make_sop(tmp_path)
    train, test = StanfordOnlineProducts(root, "train"), StanfordOnlineProducts(root, "test")
    assert train.class_ids == [1, 2, 3] and test.class_ids == [4, 5, 6]
    assert len(train) == len(test) == 6
    assert set(test.labels.tolist()) == {0, 1, 2}  # contiguous within the split, not 3..5


def test_inshop_has_train_query_and_gallery_splits(tmp_path):
    root = make_inshop(tmp_path)
    train, query, gallery = (InShop(root, split) for split in ("train", "query", "gallery"))
    assert (len(train), len(query), len(gallery)) == (6, 6, 4)
    assert set(query.paths).isdisjoint(gallery.paths)
    assert train.paths[0].is_relative_to(root / "Img" / "img")


def test_inshop_query_and_gallery_share_one_label_mapping(tmp_path):
    root = make_inshop(tmp_path)
    query, gallery = InShop(root, "query"), InShop(root, "gallery")
    assert query.class_ids == gallery.class_ids
    assert query.num_classes == gallery.num_classes == 4  # 3 shared items + 1 only in the gallery
    query_labels, gallery_labels = label_of_class(query), label_of_class(gallery)
    for item in INSHOP_TEST_ITEMS:
        assert query_labels[item] == gallery_labels[item]


def test_inshop_train_has_its_own_contiguous_mapping(tmp_path):
    train = InShop(make_inshop(tmp_path), "train")
    assert train.class_ids == sorted(INSHOP_TRAIN_ITEMS)
    assert sorted(set(train.labels.tolist())) == [0, 1, 2]


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_readers_never_write_move_or_delete_files(tmp_path, reader):
    root = fake_root(tmp_path, reader)

    def snapshot():
        return {path: path.stat().st_mtime_ns for path in root.rglob("*")}

    before = snapshot()
    for split in reader.splits:
        dataset = reader(root, split)
        dataset[0]
    assert snapshot() == before


def test_every_reader_has_a_fetch_registry_entry():
    for reader in READERS:
        assert DATASETS[reader.fetch_name].reader == reader.__name__
        assert DATASETS[reader.fetch_name].splits == reader.splits


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_missing_root_names_the_dataset_the_expected_files_and_how_to_get_them(tmp_path, reader):
    with pytest.raises(DatasetNotFoundError) as error:
        reader(tmp_path / "nowhere", "train")
    message = str(error.value)
    assert reader.title in message and str(tmp_path / "nowhere") in message
    assert reader.index_files[0].split("/")[-1] in message
    assert (
        f"python -m mpn_tutorial fetch {reader.fetch_name} --root" in message and "data/README.md" in message
    )


def test_missing_errors_are_both_value_errors_and_file_not_found_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        CUB200(tmp_path / "nowhere")
    with pytest.raises(ValueError):
        CUB200(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("reader", "index_file"),
    [
        (CUB200, "image_class_labels.txt"),
        (Cars196, "cars_annos.mat"),
        (StanfordOnlineProducts, "Ebay_test.txt"),
        (InShop, "Eval/list_eval_partition.txt"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.__name__,
)
def test_missing_index_file_is_named(tmp_path, reader, index_file):
    root = fake_root(tmp_path, reader)
    (root / index_file).unlink()
    with pytest.raises(DatasetNotFoundError, match="is missing") as error:
        reader(root, "train")
    assert str(root / index_file) in str(error.value)


def test_passing_the_folder_above_the_dataset_suggests_the_right_root(tmp_path):
    make_cub(tmp_path / "CUB_200_2011")
    with pytest.raises(DatasetNotFoundError, match="Did you mean") as error:
        CUB200(tmp_path, "train")
    assert str(tmp_path / "CUB_200_2011") in str(error.value)


@pytest.mark.parametrize(
    ("reader", "index_file", "line_number", "bad_line"),
    [
        (CUB200, "images.txt", 3, "3"),
        (CUB200, "image_class_labels.txt", 2, "2 sparrow"),
        (StanfordOnlineProducts, "Ebay_train.txt", 4, "3 x 1 bicycle_final/a.JPG"),
        (StanfordOnlineProducts, "Ebay_train.txt", 1, "id class super path"),
        (InShop, "Eval/list_eval_partition.txt", 5, "img/WOMEN/a.jpg id_00000001 validation"),
        (InShop, "Eval/list_eval_partition.txt", 1, "many"),
    ],
)
def test_malformed_index_line_is_reported_with_file_and_line_number(
    tmp_path, reader, index_file, line_number, bad_line
):
    root = fake_root(tmp_path, reader)
    path = root / index_file
    lines = path.read_text().splitlines()
    lines[line_number - 1] = bad_line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as error:
        reader(root, "train")
    assert f"{path} line {line_number}" in str(error.value)
    assert not isinstance(error.value, FileNotFoundError)


def test_cub_class_outside_1_to_200_is_reported(tmp_path):
    root = make_cub(tmp_path)
    path = root / "image_class_labels.txt"
    path.write_text(path.read_text().replace("1 150\n", "1 201\n", 1))
    with pytest.raises(DatasetError, match=r"line 1: class 201 is outside 1\.\.200"):
        CUB200(root, "test")


def test_inshop_count_line_must_match_the_listed_images(tmp_path):
    root = make_inshop(tmp_path)
    path = root / "Eval" / "list_eval_partition.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n")  # a truncated file
    with pytest.raises(DatasetError, match="announces 16 images but the file lists 13"):
        InShop(root, "train")


def test_malformed_cars_annotation_names_the_entry(tmp_path):
    root = make_cars(tmp_path)
    write_cars_annos(root / "cars_annos.mat", [("car_ims/000001.jpg", 1, 0), ("car_ims/000002.jpg", 197, 0)])
    with pytest.raises(DatasetError, match="entry 2 of the annotations") as error:
        Cars196(root, "train")
    assert "1..196" in str(error.value)


def test_cars_file_without_the_annotations_struct_is_reported(tmp_path):
    root = make_cars(tmp_path)
    scipy.io.savemat(root / "cars_annos.mat", {"class_names": np.array(["a"], dtype=object)})
    with pytest.raises(DatasetError, match="lacks the struct array 'annotations'"):
        Cars196(root, "train")


def test_cars_file_that_is_not_a_mat_file_is_reported(tmp_path):
    root = make_cars(tmp_path)
    (root / "cars_annos.mat").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(DatasetError, match="cannot read .*cars_annos.mat as a MATLAB file"):
        Cars196(root, "train")


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_index_line_pointing_at_a_missing_image_fails_at_construction(tmp_path, reader):
    root = fake_root(tmp_path, reader)
    victim = reader(root, "train").paths[1]
    victim.unlink()
    with pytest.raises(DatasetNotFoundError) as error:
        reader(root, "train")
    message = str(error.value)
    assert "1 of the 6 images" in message and str(victim) in message
    assert "line " in message or "entry " in message  # where the index lists it


def test_unreadable_image_is_reported_when_read_with_its_path(tmp_path):
    dataset = CUB200(make_cub(tmp_path), "train")
    dataset.paths[2].write_bytes(b"not a jpeg at all")
    dataset[1]  # the others still load
    with pytest.raises(DatasetError, match="cannot read image") as error:
        dataset[2]
    assert str(dataset.paths[2]) in str(error.value)


def test_truncated_image_is_reported_when_read(tmp_path):
    dataset = CUB200(make_cub(tmp_path), "train")
    data = dataset.paths[0].read_bytes()
    dataset.paths[0].write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="cannot read image"):
        dataset[0]


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_unknown_split_is_rejected(tmp_path, reader):
    with pytest.raises(ValueError, match="split must be one of"):
        reader(fake_root(tmp_path, reader), "validation")


def test_non_text_index_file_is_reported(tmp_path):
    root = make_sop(tmp_path)
    (root / "Ebay_train.txt").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DatasetError, match="is not a text file"):
        StanfordOnlineProducts(root, "train")


@pytest.mark.parametrize("image_size", [64, 227])
def test_the_test_transform_sees_the_release_field_of_view_at_every_crop_size(image_size):
    from PIL import Image

    width, height = 320, 256
    ramp = np.tile(np.linspace(0, 255, width, dtype=np.float64), (height, 1))  # red = horizontal position
    image = Image.fromarray(np.stack([ramp, np.zeros_like(ramp), np.zeros_like(ramp)], axis=2).astype(np.uint8))
    red = recipe.test_transform(image_size)(image)[0] * recipe.IMAGENET_STD[0] + recipe.IMAGENET_MEAN[0]
    left, right = float(red[:, 0].mean()), float(red[:, -1].mean())
    # The release: shorter side to 256, the central 227: columns 46.5 .. 273.5 of 320 (14.5% .. 85.5%).
    assert left == pytest.approx(46.5 / width, abs=0.02) and right == pytest.approx(273.5 / width, abs=0.02)
