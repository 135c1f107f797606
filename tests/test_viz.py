"""The explorers are driven headless: set a slider's value, check what the callback computed."""

import numpy as np
import pytest
import torch

from mpn_tutorial import viz


def _attention(num_layers=2, num_heads=4, n=12, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(num_layers, num_heads, n, n))
    return np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)


LABELS = np.array([2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
IMAGES = torch.rand(12, 1, 32, 32)


def test_uniform_attention_has_the_chance_share_and_block_attention_has_share_one():
    n, k = 12, 4
    uniform = np.full((1, 1, n, n), 1 / n)
    assert viz.same_class_attention_share(uniform, LABELS)[0, 0] == pytest.approx((k - 1) / (n - 1))
    block = (LABELS[:, None] == LABELS[None, :]).astype(float)
    block /= block.sum(-1, keepdims=True)
    assert viz.same_class_attention_share(block[None, None], LABELS)[0, 0] == pytest.approx(1.0)


def test_attention_view_sorts_by_class_and_ranks_what_the_query_attends_to():
    attention = _attention()
    view = viz.attention_view(attention, LABELS, layer=1, head=2, query=5, top_k=3)
    order = np.argsort(LABELS, kind="stable")
    np.testing.assert_array_equal(view.matrix, attention[1, 2][np.ix_(order, order)])
    assert view.boundaries.tolist() == [4, 8]
    row = attention[1, 2, 5]
    assert view.top.tolist() == np.argsort(-row)[:3].tolist()
    assert "layer 2 · head 3 of 4 · query in row" in view.caption and "sample 5" in view.caption


def test_dragging_the_head_slider_recomputes_the_view_the_caption_and_the_figure():
    explorer = viz.AttentionExplorer([(0, _attention(seed=1)), (1, _attention(seed=2))], IMAGES, LABELS)
    before_image, before_caption = explorer.image.value, explorer.caption.value
    explorer.head_slider.value = 3
    assert explorer.current.head == 2
    assert "head 3 of 4" in explorer.caption.value and explorer.caption.value != before_caption
    assert explorer.image.value != before_image and explorer.image.value[:4] == b"\x89PNG"


def test_the_epoch_slider_switches_to_that_epochs_attention():
    first, second = _attention(seed=1), _attention(seed=2)
    explorer = viz.AttentionExplorer([(0, first), (5, second)], IMAGES, LABELS)
    explorer.epoch_slider.value = 0
    order = np.argsort(LABELS, kind="stable")
    np.testing.assert_array_equal(explorer.current.matrix, first[0, 0][np.ix_(order, order)])
    assert explorer.caption.value.startswith("<b>epoch 0</b>")


def test_the_epoch_explorer_shows_the_chosen_frame():
    frames = [(e, np.random.default_rng(e).normal(size=(12, 2))) for e in (0, 1, 2)]
    explorer = viz.EpochExplorer(frames, LABELS, notes={2: "val R@1 50%"})
    explorer.epoch_slider.value = 2
    np.testing.assert_array_equal(explorer.current["coordinates"][""], frames[2][1])
    assert "val R@1 50%" in explorer.caption.value


def test_the_epoch_explorer_starts_on_the_epoch_asked_for_and_refuses_one_it_lacks():
    frames = [(e, np.random.default_rng(e).normal(size=(12, 2))) for e in (0, 1, 2)]
    explorer = viz.EpochExplorer(frames, LABELS, start=2)
    assert explorer.epoch_slider.value == 2
    np.testing.assert_array_equal(explorer.current["coordinates"][""], frames[2][1])
    with pytest.raises(ValueError, match="start=5 is not an epoch"):
        viz.EpochExplorer(frames, LABELS, start=5)


def test_the_epoch_explorer_shows_two_runs_at_the_same_epoch_side_by_side():
    runs = {name: [(e, np.random.default_rng([e, index]).normal(size=(12, 2))) for e in (0, 1)]
            for index, name in enumerate(("messages on", "messages off"))}
    explorer = viz.EpochExplorer(runs, LABELS)
    explorer.epoch_slider.value = 1
    for name, frames in runs.items():
        np.testing.assert_array_equal(explorer.current["coordinates"][name], frames[1][1])


def test_umap_across_training_is_deterministic_and_places_every_snapshot_on_one_map():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    labels = np.repeat(np.arange(4), 15)
    snapshots = [(e, centres[labels] * e + rng.normal(size=(60, 8))) for e in (0, 1, 2)]
    first = viz.umap_across_training(snapshots, seed=0)
    second = viz.umap_across_training(snapshots, seed=0)
    assert [epoch for epoch, _ in first] == [0, 1, 2]
    for (_, a), (_, b) in zip(first, second):
        assert a.shape == (60, 2)
        np.testing.assert_array_equal(a, b)


def test_every_epoch_lands_on_the_last_epochs_map_so_a_rotated_embedding_moves():
    # Positions are comparable across epochs only on one map. An earlier epoch that is a rotation of the
    # last one has the same within-epoch similarities (a per-epoch UMAP would draw it identically), but
    # on the last epoch's map it is another place.
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 15)
    last = rng.normal(size=(4, 8))[labels] * 3 + rng.normal(size=(60, 8))
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    frames = dict(viz.umap_across_training([(0, last @ rotation), (1, last)], seed=0))
    size = np.ptp(frames[1], axis=0).mean()
    assert np.linalg.norm(frames[0] - frames[1], axis=1).mean() > 0.1 * size


def test_figures_are_built_from_datasets_and_embeddings(data_root):
    from mpn_tutorial.data import GlyphDataset
    from mpn_tutorial.losses import TripletLoss

    dataset = GlyphDataset("val", root=data_root)
    assert len(viz.show_gallery(dataset, num_classes=3, per_class=4).axes) == 12
    embeddings = torch.randn(len(dataset), 8)
    assert len(viz.show_retrievals(dataset, embeddings, [0, 100], k=3).axes) == 8
    images, labels = dataset.batch(range(0, 96, 4))
    triplets = TripletLoss(mining="hard").mine(torch.randn(24, 8), labels)
    assert len(viz.show_triplets(images, labels, triplets, max_rows=2).axes) == 6
    assert len(viz.show_pairs(torch.randn(24, 8), labels).axes) == 3  # two panels and a colour bar


def test_the_query_slider_counts_the_rows_of_the_class_sorted_map():
    explorer = viz.AttentionExplorer([(0, _attention())], IMAGES, LABELS)
    order = np.argsort(LABELS, kind="stable")
    explorer.query_slider.value = 5
    assert explorer.current.query == order[4]  # the sample in row 5 of the sorted heat map, counted from 1
    assert explorer.query_slider.min == explorer.head_slider.min == 1  # every slider counts from 1
    assert "row 5" in explorer.current.caption


def test_the_explorer_image_is_shown_at_its_own_width():
    explorer = viz.EpochExplorer([(0, np.random.default_rng(0).normal(size=(12, 2)))], LABELS)
    png = explorer.image.value
    assert int(explorer.image.width) == int.from_bytes(png[16:20], "big")


def test_the_embedding_frame_has_a_legend_of_the_class_names():
    figure = viz.plot_embedding_frame(np.random.default_rng(0).normal(size=(12, 2)), LABELS, 3,
                                      names={0: "A", 1: "B", 2: "C"})
    legend = figure.axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["A", "B", "C"]
