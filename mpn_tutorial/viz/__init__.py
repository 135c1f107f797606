"""Figures and interactive explorers for the notebooks (``from mpn_tutorial import viz``).

- ``figures``: data and retrieval, pairs and triplets, training curves, seeds and budgets (the tables
  are ``tools.stats.table``), the batch as a graph, the model, a benchmark's results side by side
- ``attention``: one sample's message on a batch, attention maps, the same-class share per head
- ``embeddings``: every epoch's embeddings on one UMAP map
- ``explorers``: :class:`AttentionExplorer`, :class:`EpochExplorer`
"""

from mpn_tutorial.metrics import same_class_attention_share
from mpn_tutorial.viz.attention import attention_view, plot_message, plot_same_class_share
from mpn_tutorial.viz.embeddings import frame_limits, plot_embedding_frame, plot_embedding_frames, umap_across_training
from mpn_tutorial.viz.explorers import AttentionExplorer, EpochExplorer
from mpn_tutorial.viz.figures import (
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
    "AttentionExplorer",
    "EpochExplorer",
    "attention_view",
    "frame_limits",
    "plot_architecture",
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
