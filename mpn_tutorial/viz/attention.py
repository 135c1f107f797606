"""Attention maps: which samples of a batch each query attends to, per layer and head.

:func:`attention_view` selects what to show (a pure function the explorer calls); the ``plot_*``
functions draw it. The share of attention that stays within a query's class is
:func:`mpn_tutorial.metrics.same_class_attention_share`.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from mpn_tutorial.metrics import same_class_attention_share
from mpn_tutorial.viz.figures import class_order, draw_class_boundaries, draw_thumbnail


@dataclass
class AttentionView:
    """What the attention explorer shows for one (layer, head, query)."""

    layer: int
    head: int
    query: int  # index into the batch
    matrix: np.ndarray  # (N, N) attention of this head, rows and columns sorted by class
    order: np.ndarray  # (N,) batch index of each sorted row
    boundaries: np.ndarray  # sorted positions where a new class starts
    top: np.ndarray  # (k,) batch indices the query attends to most, strongest first
    top_weights: np.ndarray  # (k,)
    same_class_share: float  # share of the query's attention (to others) on its own class
    caption: str


def attention_view(attention, labels, layer: int = 0, head: int = 0, query: int = 0, top_k: int = 5) -> AttentionView:
    """Select one head of one layer from (L, H, N, N) attention and describe it for a query."""
    attention = np.asarray(attention)
    if attention.ndim == 3:
        attention = attention[None]
    num_layers, num_heads, n, _ = attention.shape
    if not (0 <= layer < num_layers and 0 <= head < num_heads and 0 <= query < n):
        raise ValueError(f"layer {layer}, head {head}, query {query} out of range for attention of shape "
                         f"{attention.shape}")
    labels = np.asarray(labels)
    weights = attention[layer, head]
    order, boundaries = class_order(labels)
    row = weights[query].copy()
    top = np.argsort(-row, kind="stable")[:top_k]
    share = float(same_class_attention_share(weights[None], labels)[0]) if n > 1 else 0.0
    others = np.arange(n) != query
    query_share = float(row[others & (labels == labels[query])].sum() / max(row[others].sum(), 1e-12))
    caption = (f"layer {layer + 1} · head {head + 1} of {num_heads} · query {query} (class {labels[query]}): "
               f"{100 * query_share:.0f}% of its attention to others stays in its class "
               f"(this head, all queries: {100 * share:.0f}%)")
    return AttentionView(layer, head, query, weights[np.ix_(order, order)], order, boundaries, top,
                         row[top], query_share, caption)


def plot_attention_view(view: AttentionView, images, labels, title: str = "") -> Figure:
    """Heat map of the head's N×N attention sorted by class (white lines: class boundaries), the
    query's row highlighted, and thumbnails of the query and the samples it attends to most."""
    labels = np.asarray(labels)
    k = len(view.top)
    figure = plt.figure(figsize=(11, 4.6))
    # columns: heat map, colour bar, a spacer for the colour bar's tick labels, then k thumbnails
    grid = figure.add_gridspec(2, k + 3, width_ratios=[6, 0.3, 0.9] + [1] * k, height_ratios=[1, 1])
    heat = figure.add_subplot(grid[:, 0])
    shown = heat.imshow(view.matrix, cmap="magma", vmin=0, vmax=max(float(view.matrix.max()), 1e-6))
    draw_class_boundaries(heat, view.boundaries, linewidth=0.7)
    row_position = int(np.flatnonzero(view.order == view.query)[0])
    heat.axhline(row_position, color="cyan", linewidth=1.2, alpha=0.8)
    heat.set_xlabel("attended sample j (sorted by class)")
    heat.set_ylabel("query sample i (sorted by class)")
    heat.set_title(title or f"attention weights a_ij, layer {view.layer + 1}, head {view.head + 1}", fontsize=10)
    colour_axis = figure.add_subplot(grid[:, 1])
    figure.colorbar(shown, cax=colour_axis)
    query_axis = figure.add_subplot(grid[0, 3])
    draw_thumbnail(query_axis, images[view.query], f"query {view.query}", frame="cyan")
    for position, (index, weight) in enumerate(zip(view.top, view.top_weights)):
        axis = figure.add_subplot(grid[1, 3 + position])
        same = labels[index] == labels[view.query]
        draw_thumbnail(axis, images[int(index)], f"{weight:.3f}" + (" (self)" if index == view.query else ""),
                   frame="tab:green" if same else "tab:red")
    figure.text(0.66, 0.06, "most attended (weight; green: same class)", fontsize=9)
    return figure


def plot_heads(attention, labels, shares=None, title: str = "") -> Figure:
    """Every head of one layer side by side: attention (H, N, N) sorted by class."""
    attention = np.asarray(attention)
    order, boundaries = class_order(labels)
    num_heads = attention.shape[0]
    shares = same_class_attention_share(attention, labels) if shares is None else shares
    figure, axes = plt.subplots(1, num_heads, figsize=(2.6 * num_heads + 0.5, 2.9), squeeze=False)
    largest = float(attention.max())  # one colour scale for all heads, so they can be compared
    for head in range(num_heads):
        axis = axes[0, head]
        axis.imshow(attention[head][np.ix_(order, order)], cmap="magma", vmin=0, vmax=largest)
        draw_class_boundaries(axis, boundaries, linewidth=0.5)
        axis.set_title(f"head {head + 1}: {100 * shares[head]:.0f}% same class", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
        if head == 0:
            axis.set_ylabel("query (sorted by class)", fontsize=8)
        axis.set_xlabel("attended sample", fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_same_class_share(snapshots, labels, chance: float | None = None) -> Figure:
    """Share of attention on same-class samples, per head, across training epochs."""
    epochs = [epoch for epoch, _ in snapshots]
    shares = np.stack([same_class_attention_share(attention, labels) for _, attention in snapshots])  # (E, L, H)
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for layer in range(shares.shape[1]):
        for head in range(shares.shape[2]):
            axis.plot(epochs, 100 * shares[:, layer, head], marker="o",
                      label=f"layer {layer + 1}, head {head + 1}" if shares.shape[1] > 1 else f"head {head + 1}")
    if chance is not None:
        axis.axhline(100 * chance, color="gray", linestyle="--", label="attention spread evenly")
    axis.set_xlabel("epoch")
    axis.set_ylabel("attention to own class (%)")
    axis.set_ylim(0, 100)
    axis.set_title("how much each head attends to samples of the query's class")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
