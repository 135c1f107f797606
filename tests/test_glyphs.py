import numpy as np
import pytest
import torch

from mpn_tutorial.data import GlyphDataset
from mpn_tutorial.data import glyphs as glyph_module
from mpn_tutorial.data.glyphs import (
    DUPLICATE_THRESHOLD,
    _reduce,
    cache_path,
    character_maps,
    font_paths,
    generate_glyphs,
    glyph_classes,
    load_glyphs,
    relative_difference,
    render_missing_glyph,
)


def test_at_least_200_classes_with_at_least_48_images_each(glyph_arrays):
    counts = np.bincount(glyph_arrays["labels"])
    assert len(counts) >= 200
    assert counts.min() >= 48


def test_no_two_classes_render_identically_in_any_face():
    classes, renders = glyph_classes()
    for face in range(renders.shape[1]):
        having = [i for i, c in enumerate(classes) if face in c.faces]
        small = _reduce(torch.from_numpy(renders[having, face]), 32).flatten(1)
        distance = relative_difference(small, small)
        distance.fill_diagonal_(float("inf"))
        assert distance.min() >= DUPLICATE_THRESHOLD, f"face {face} has two classes that render identically"


def test_look_alike_letters_of_different_scripts_are_one_class():
    classes, _ = glyph_classes()
    latin_a = next(c for c in classes if ord("A") in c.merged)
    assert {0x0391, 0x0410} <= set(latin_a.merged)  # Greek Alpha, Cyrillic A


def test_no_glyph_is_drawn_from_a_face_that_lacks_it_or_as_its_missing_glyph_box():
    from PIL import ImageFont

    classes, renders = glyph_classes()
    maps = character_maps()
    fonts = [ImageFont.truetype(str(p), glyph_module.FONT_SIZE) for p in font_paths()]
    for face, font in enumerate(fonts):
        missing = torch.from_numpy(render_missing_glyph(font)).flatten()[None]
        having = [i for i, c in enumerate(classes) if face in c.faces]
        assert all(maps[face].get(classes[i].codepoint, 0) != 0 for i in having)
        difference = relative_difference(torch.from_numpy(renders[having, face]).flatten(1), missing)
        assert difference.min() >= DUPLICATE_THRESHOLD


def test_generation_is_deterministic_for_a_seed_and_differs_between_seeds():
    first = generate_glyphs(seed=5, images_per_class=2)
    second = generate_glyphs(seed=5, images_per_class=2)
    other = generate_glyphs(seed=6, images_per_class=2)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.array_equal(first["images"], other["images"])


def test_train_val_and_test_classes_are_disjoint_and_test_is_half(data_root):
    splits = {name: GlyphDataset(name, root=data_root) for name in ("train", "val", "test")}
    characters = {name: set(ds.characters) for name, ds in splits.items()}
    assert not characters["train"] & characters["val"]
    assert not characters["train"] & characters["test"]
    assert not characters["val"] & characters["test"]
    total = sum(ds.num_classes for ds in splits.values())
    assert splits["test"].num_classes == total // 2


def test_labels_are_contiguous_within_a_split(data_root):
    dataset = GlyphDataset("val", root=data_root)
    assert dataset.labels.dtype == torch.int64
    assert sorted(torch.unique(dataset.labels).tolist()) == list(range(dataset.num_classes))


def test_items_are_one_channel_float_images_with_int_labels(data_root):
    dataset = GlyphDataset("test", root=data_root)
    image, label = dataset[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1
    assert isinstance(label, int) and label == int(dataset.labels[0])


def test_an_unknown_split_gets_a_clear_error(data_root):
    with pytest.raises(ValueError, match="split must be one of"):
        GlyphDataset("validation", root=data_root)


def test_a_failed_cache_write_leaves_no_file(tmp_path, monkeypatch):
    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(glyph_module.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        load_glyphs(tmp_path, images_per_class=2)
    assert list((tmp_path / "glyphs").iterdir()) == []


def test_a_corrupt_cache_is_regenerated(tmp_path):
    path = cache_path(tmp_path, 0, 32, 2)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a file")
    with pytest.warns(UserWarning, match="unreadable"):
        arrays = load_glyphs(tmp_path, images_per_class=2)
    assert arrays["images"].shape[1:] == (32, 32)
    with np.load(path) as archive:  # the regenerated cache replaced the corrupt one
        np.testing.assert_array_equal(archive["images"], arrays["images"])


def test_a_transform_is_applied_by_item_and_by_batch(data_root):
    flipped = GlyphDataset("val", root=data_root, transform=lambda image: image.flip(-1))
    plain = GlyphDataset("val", root=data_root)
    images, _ = flipped.batch([0, 1])
    assert torch.equal(images[1], plain[1][0].flip(-1)) and torch.equal(flipped[0][0], images[0])


def test_the_validation_fraction_decides_how_many_training_classes_are_held_out(data_root):
    small = GlyphDataset("val", root=data_root, val_fraction=0.1)
    large = GlyphDataset("val", root=data_root, val_fraction=0.3)
    train_small = GlyphDataset("train", root=data_root, val_fraction=0.1)
    train_large = GlyphDataset("train", root=data_root, val_fraction=0.3)
    assert small.num_classes < large.num_classes
    assert small.num_classes + train_small.num_classes == large.num_classes + train_large.num_classes


@pytest.mark.parametrize("settings, message", [(dict(image_size=0), "image_size"), (dict(image_size=128), "image_size"),
                                               (dict(images_per_class=1), "images_per_class")])
def test_impossible_glyph_settings_are_refused(settings, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        GlyphDataset("train", root=tmp_path, **settings)


@pytest.mark.parametrize("fraction", [0.001, 0.999])
def test_an_extreme_validation_fraction_still_leaves_two_classes_on_each_side(fraction, data_root):
    val, train = (GlyphDataset(split, root=data_root, val_fraction=fraction) for split in ("val", "train"))
    assert val.num_classes >= 2 and train.num_classes >= 2
    assert val.num_classes + train.num_classes == 617 - 308  # the training half, split in two
