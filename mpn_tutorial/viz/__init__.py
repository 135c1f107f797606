"""Figures and interactive explorers for the notebooks (``from mpn_tutorial import viz``).

Every picture is drawn by a plain function that returns a matplotlib ``Figure`` (testable without
a browser), and every explorer computes what it shows in a library function; the widget
callbacks only call ``update``.

- ``figures``: data and retrieval (:func:`show_gallery`, :func:`show_retrievals`), pairs and
  triplets (:func:`show_pairs`, :func:`show_triplets`), training curves (:func:`plot_histories`),
  seeds and budgets (:func:`plot_budget_curve`, :func:`plot_paired_differences`,
  :func:`plot_class_similarity`; the tables are ``tools.stats.table``), the batch as a graph and the
  model (:func:`plot_batch_graph`, :func:`plot_architecture`), a benchmark's results side by side
  (:func:`plot_reported_results`)
- ``attention``: :func:`plot_message` (one sample's message on a batch), :func:`attention_view`,
  :func:`plot_attention_view`,
  :func:`plot_same_class_share` (the share itself: :func:`same_class_attention_share`)
- ``embeddings``: :func:`umap_across_training`, :func:`plot_embedding_frame`, :func:`plot_embedding_frames`
- ``explorers``: :class:`AttentionExplorer`, :class:`EpochExplorer`
"""

from mpn_tutorial.metrics import same_class_attention_share
from mpn_tutorial.viz.attention import (
    AttentionView,
    attention_view,
    plot_attention_view,
    plot_message,
    plot_same_class_share,
)
from mpn_tutorial.viz.embeddings import (
    frame_limits,
    plot_embedding_frame,
    plot_embedding_frames,
    umap_across_training,
)
from mpn_tutorial.viz.explorers import AttentionExplorer, EpochExplorer
from mpn_tutorial.viz.figures import (
    CLASS_COLOURS,
    class_order,
    draw_class_boundaries,
    figure_to_png,
    plot_architecture,
    plot_batch_graph,
    plot_budget_curve,
    plot_class_similarity,
    plot_histories,
    plot_paired_differences,
    plot_reported_results,
    show_gallery,
    show_pairs,
    show_retrievals,
    show_triplets,
)

__all__ = [
    "CLASS_COLOURS",
    "AttentionExplorer",
    "AttentionView",
    "EpochExplorer",
    "attention_view",
    "class_order",
    "draw_class_boundaries",
    "figure_to_png",
    "frame_limits",
    "plot_architecture",
    "plot_attention_view",
    "plot_batch_graph",
    "plot_budget_curve",
    "plot_class_similarity",
    "plot_embedding_frame",
    "plot_embedding_frames",
    "plot_message",
    "plot_histories",
    "plot_paired_differences",
    "plot_reported_results",
    "plot_same_class_share",
    "same_class_attention_share",
    "show_gallery",
    "show_pairs",
    "show_retrievals",
    "show_triplets",
    "umap_across_training",
]
