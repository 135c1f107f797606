"""Attention maps: which samples of a batch each query attends to, per layer and head.

:func:`attention_view` selects what to show (a pure function the explorer calls); ``plot_*`` draw it.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mpn_tutorial.errors import UsageError
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
    num_layers, num_heads, n, _ = attention.shape
    if not (0 <= layer < num_layers and 0 <= head < num_heads and 0 <= query < n):
        raise UsageError(f"layer {layer}, head {head}, query {query} out of range for attention of shape "
                         f"{attention.shape}")
    labels, weights = np.asarray(labels), attention[layer, head]
    order, boundaries = class_order(labels)
    row = weights[query]
    top = np.argsort(-row, kind="stable")[:top_k]
    shares = same_class_attention_share(weights, labels, per_query=True) if n > 1 else np.zeros(n)
    share, query_share = float(shares.mean()), float(shares[query])
    position = int(np.flatnonzero(order == query)[0])
    caption = (f"layer {layer + 1} · head {head + 1} of {num_heads} · query in row {position + 1} of the sorted map "
               f"(sample {query}, class {labels[query]}): "
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
    n = len(view.matrix)  # the query's row framed inside the map (a line on row 1 would sit on the border)
    heat.add_patch(Rectangle((-0.5, row_position - 0.5), n, 1, fill=False, edgecolor="cyan", linewidth=1.5))
    ticks = [tick for tick in (1, *range(8, n + 1, 8)) if tick <= n]  # rows and columns count from 1, as the sliders
    heat.set_xticks([tick - 1 for tick in ticks], ticks)
    heat.set_yticks([tick - 1 for tick in ticks], ticks)
    heat.set(xlabel="attended sample j (sorted by class)", ylabel="query row i (sorted by class)")
    heat.set_title(title or f"attention weights $a_{{ij}}$, layer {view.layer + 1}, head {view.head + 1}",
                   fontsize=10)
    figure.colorbar(shown, cax=figure.add_subplot(grid[:, 1]))
    draw_thumbnail(figure.add_subplot(grid[0, 3]), images[view.query], f"query (row {row_position + 1})", frame="cyan")
    for position, (index, weight) in enumerate(zip(view.top, view.top_weights)):
        draw_thumbnail(figure.add_subplot(grid[1, 3 + position]), images[int(index)],
                       f"{weight:.3f}" + (" (self)" if index == view.query else ""),
                       frame="tab:green" if labels[index] == labels[view.query] else "tab:red")
    figure.text(0.66, 0.06, "most attended (weight; green: same class)", fontsize=9)
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
    axis.set(xlabel="epoch", ylabel="attention to own class (%)", ylim=(0, 100),
             title="how much each head attends to samples of the query's class")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=10)
    figure.tight_layout()
    return figure


def plot_message(images, labels, weights, values, query: int, top_k: int = 8) -> Figure:
    """One sample's message on one batch: the query and the samples it weights most (top row), its weights
    over the whole batch, and, on the values' first two principal directions, the values and the message
    m = sum_j a_ij v_j they average to. ``weights``: the query's row (N,); ``values``: (N, D)."""
    labels, weights = np.asarray(labels), np.asarray(weights, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    same = labels == labels[query]
    figure = plt.figure(figsize=(12, 7), layout="constrained")
    rows = figure.add_gridspec(2, 1, height_ratios=[1, 2.6])
    strip = rows[0].subgridspec(1, top_k + 2, width_ratios=[1, 0.3] + [1] * top_k)
    draw_thumbnail(figure.add_subplot(strip[0, 0]), images[query], "the query", frame="tab:cyan")
    figure.add_subplot(strip[0, 1]).axis("off")
    top = np.argsort(-weights, kind="stable")[:top_k]
    for position, index in enumerate(top):
        draw_thumbnail(figure.add_subplot(strip[0, 2 + position]), images[int(index)],
                       f"a = {weights[index]:.3f}" + (" (self)" if index == query else ""),
                       frame="tab:green" if same[index] else "tab:red")
    panels = rows[1].subgridspec(1, 2, width_ratios=[1.4, 1])
    order, _ = class_order(labels)
    bars = figure.add_subplot(panels[0, 0])
    bars.bar(np.arange(len(order)), weights[order], color=np.where(same[order], "tab:green", "0.6"), width=0.9)
    bars.axhline(1 / len(weights), color="black", linestyle="--", linewidth=1, label="1/N: every sample alike")
    bars.set(xlabel="sample j of the batch, sorted by class (green: the query's class)", ylabel="weight $a_{ij}$",
             title=f"the query's weights over the batch (top row: its {top_k} largest)")
    bars.legend()
    centred = values - values.mean(axis=0)
    directions = np.linalg.svd(centred, full_matrices=False)[2][:2].T  # the two principal directions
    points, message = centred @ directions, (weights @ centred) @ directions
    plane = figure.add_subplot(panels[0, 1])
    for chosen, colour, name in ((~same, "0.6", "values of other classes"), (same, "tab:green", "values of its class")):
        plane.scatter(points[chosen, 0], points[chosen, 1], s=400 * weights[chosen] + 8, c=colour, label=name)
    plane.scatter(*points[query], marker="x", s=140, c="tab:cyan", linewidths=3, label="the query's own value")
    plane.scatter(*message, marker="*", s=340, c="black", label="its message: the weighted mean")
    plane.set(title="values $v_j$ (marker size: weight) and the message", xticks=[], yticks=[])
    plane.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=9)
    return figure
