"""Figures and interactive explorers for the notebooks.

Every picture is drawn by a plain function that returns a matplotlib ``Figure`` (testable without
a browser), and every explorer computes what it shows in a library function; the widget
callbacks only call :meth:`update`. Tests set a slider's value and check :attr:`current`.

- data: :func:`show_gallery`, :func:`show_retrievals`
- baselines: :func:`show_pairs`, :func:`show_triplets`, :func:`plot_histories`, :func:`results_table`
- attention: :func:`attention_view`, :func:`same_class_attention_share`, :class:`AttentionExplorer`,
  :class:`HeadsExplorer`
- embeddings over training: :func:`umap_across_training`, :class:`EpochExplorer`, :func:`export_animation`
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

CLASS_COLOURS = plt.get_cmap("tab20")


def _image(array) -> np.ndarray:
    """A (C, H, W) or (H, W) image tensor/array -> something imshow takes."""
    array = np.asarray(array.detach().cpu() if isinstance(array, torch.Tensor) else array, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    if array.ndim == 3:  # undo ImageNet normalisation roughly for display
        array = (array - array.min()) / max(array.max() - array.min(), 1e-8)
    return array


def _thumbnail(axis, image, title: str | None = None, frame: str | None = None) -> None:
    axis.imshow(_image(image), cmap="gray", vmin=0 if np.ndim(image) != 3 or np.shape(image)[0] == 1 else None,
                vmax=1 if np.ndim(image) != 3 or np.shape(image)[0] == 1 else None)
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=8)
    for spine in axis.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_color(frame)
            spine.set_linewidth(3)


def figure_to_png(figure: Figure, dpi: int = 90) -> bytes:
    """PNG bytes of a figure (what the explorers put into their image widget)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Data and retrieval
# ---------------------------------------------------------------------------------------------


def show_gallery(dataset, num_classes: int = 8, per_class: int = 10, seed: int = 0) -> Figure:
    """A grid: one row per class (chosen at random), ``per_class`` of its images."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(dataset.labels)
    classes = np.sort(rng.choice(np.unique(labels), size=min(num_classes, len(np.unique(labels))), replace=False))
    figure, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95),
                                squeeze=False)
    names = getattr(dataset, "characters", None)
    for row, label in enumerate(classes):
        members = rng.permutation(np.flatnonzero(labels == label))[:per_class]
        for column in range(per_class):
            axis = axes[row, column]
            if column < len(members):
                _thumbnail(axis, dataset[int(members[column])][0])
            else:
                axis.axis("off")
        name = f"'{names[label]}' (U+{ord(names[label]):04X})" if names is not None else f"class {label}"
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    figure.suptitle(f"{len(classes)} classes × {per_class} images", fontsize=11)
    figure.tight_layout()
    return figure


def nearest_neighbours(embeddings: torch.Tensor, queries: Sequence[int], k: int) -> torch.Tensor:
    """(len(queries), k) indices of each query's k most similar other samples (cosine)."""
    embeddings = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float32), dim=1)
    queries = torch.as_tensor(list(queries))
    similarity = embeddings[queries] @ embeddings.T
    similarity[torch.arange(len(queries)), queries] = -float("inf")
    return similarity.topk(k, dim=1).indices


def show_retrievals(dataset, embeddings, queries: Sequence[int], k: int = 6, title: str = "") -> Figure:
    """Each row: a query, then its k nearest neighbours; green frame = same class, red = other class."""
    neighbours = nearest_neighbours(embeddings, queries, k)
    labels = np.asarray(dataset.labels)
    figure, axes = plt.subplots(len(queries), k + 1, figsize=((k + 1) * 0.95, len(queries) * 1.0), squeeze=False)
    for row, query in enumerate(queries):
        _thumbnail(axes[row, 0], dataset[int(query)][0], "query" if row == 0 else None, frame="black")
        for column, neighbour in enumerate(neighbours[row].tolist(), start=1):
            same = labels[neighbour] == labels[query]
            _thumbnail(axes[row, column], dataset[neighbour][0], f"#{column}" if row == 0 else None,
                       frame="tab:green" if same else "tab:red")
    figure.suptitle(title or "nearest neighbours (green: same class, red: other class)", fontsize=10)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------
# Pairs, triplets and training curves
# ---------------------------------------------------------------------------------------------


def show_pairs(embeddings, labels, title: str = "pairs in a P×K batch") -> Figure:
    """Left: which pairs are positive / negative; right: their distances, both sorted by class."""
    from mpn_tutorial.losses import pair_masks, pairwise_distances

    labels = torch.as_tensor(labels)
    order = torch.argsort(labels, stable=True)
    positive, negative = pair_masks(labels[order])
    kind = np.zeros(positive.shape)
    kind[positive.numpy()] = 1
    kind[negative.numpy()] = -1
    distances = pairwise_distances(torch.as_tensor(embeddings, dtype=torch.float32)[order]).detach().numpy()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4))
    left.imshow(kind, cmap="coolwarm_r", vmin=-1.5, vmax=1.5)
    left.set_title("positive pairs (blue), negative pairs (red)", fontsize=10)
    shown = right.imshow(distances, cmap="viridis")
    right.set_title("distance between embeddings", fontsize=10)
    figure.colorbar(shown, ax=right, fraction=0.046)
    for axis in (left, right):
        axis.set_xlabel("sample j (sorted by class)")
        axis.set_ylabel("sample i (sorted by class)")
        _draw_class_boundaries(axis, labels[order].numpy())
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def show_triplets(images, labels, triplets, max_rows: int = 4, title: str = "") -> Figure:
    """Rows of (anchor, positive, negative) images for triplets given as index tensors."""
    anchors, positives, negatives = (torch.as_tensor(t) for t in triplets)
    rows = min(max_rows, len(anchors))
    # spread the rows over the list, so they show different anchors rather than one anchor's triplets
    chosen = np.linspace(0, len(anchors) - 1, rows).round().astype(int) if rows else np.array([], dtype=int)
    anchors, positives, negatives = anchors[chosen], positives[chosen], negatives[chosen]
    figure, axes = plt.subplots(max(rows, 1), 3, figsize=(3.3, 1.15 * max(rows, 1) + 0.4), squeeze=False)
    for row in range(rows):
        for column, (name, index, colour) in enumerate(
            (("anchor", anchors[row], "black"), ("positive", positives[row], "tab:green"),
             ("negative", negatives[row], "tab:red"))
        ):
            _thumbnail(axes[row, column], images[int(index)], name if row == 0 else None, frame=colour)
    if rows == 0:
        for axis in axes[0]:
            axis.axis("off")
        axes[0, 1].set_title("no triplet chosen", fontsize=9)
    figure.suptitle(title or f"{len(anchors)} triplets", fontsize=10)
    figure.tight_layout()
    return figure


def plot_histories(histories: dict[str, list[dict]], metric: str = "val_recall@1") -> Figure:
    """One line per run: a history metric (default validation Recall@1) against the epoch."""
    figure, axis = plt.subplots(figsize=(6, 3.6))
    for name, history in histories.items():
        axis.plot([row["epoch"] for row in history], [row[metric] for row in history], marker="o", label=name)
    axis.set_xlabel("epoch")
    axis.set_ylabel(metric.replace("val_", "validation ").replace("recall@", "Recall@"))
    axis.set_title(f"{metric.replace('val_', 'validation ')} during training")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return figure


def results_table(results: dict[str, dict[str, float]], columns: Sequence[str] = ("recall@1", "recall@2",
                  "recall@4", "recall@8", "map@r")) -> str:
    """A plain-text table of metrics in percent, one row per run (printed by the notebooks)."""
    header = f"{'method':<28}" + "".join(f"{c.replace('recall@', 'R@').replace('map@r', 'MAP@R'):>8}"
                                         for c in columns)
    lines = [header, "-" * len(header)]
    for name, values in results.items():
        lines.append(f"{name:<28}" + "".join(f"{100 * values[c]:8.1f}" for c in columns))
    return "\n".join(lines)


def summarize_seeds(
    runs: dict[str, list[dict[str, float]]], metric: str = "recall@1"
) -> dict[str, tuple[float, float]]:
    """``{variant: [metrics of each seed]}`` -> ``{variant: (mean, standard deviation)}`` of one metric."""
    summary = {}
    for name, results in runs.items():
        values = np.array([r[metric] for r in results], dtype=np.float64)
        summary[name] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return summary


def plot_ablation(summary: dict[str, tuple[float, float]], metric: str = "Recall@1", title: str = "") -> Figure:
    """Horizontal bars of mean ± standard deviation over seeds, one per variant."""
    names = list(summary)
    means = np.array([summary[n][0] for n in names]) * 100
    stds = np.array([summary[n][1] for n in names]) * 100
    figure, axis = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.2))
    axis.barh(range(len(names)), means, xerr=stds, color="tab:blue", alpha=0.8, capsize=4)
    axis.set_yticks(range(len(names)), names)
    axis.invert_yaxis()
    axis.set_xlabel(f"test {metric} (%), mean ± std over seeds")
    low = max(0.0, float((means - stds).min()) - 5)
    axis.set_xlim(low, min(100.0, float((means + stds).max()) + 3))
    for index, (mean, std) in enumerate(zip(means, stds)):
        axis.text(mean + std + 0.3, index, f"{mean:.1f} ± {std:.1f}", va="center", fontsize=8)
    axis.set_title(title or "ablations")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def plot_batch_graph(labels, title: str = "a P×K batch as a fully connected graph") -> Figure:
    """Samples of a batch on a circle, coloured by class, every pair joined (self-loops drawn as rings)."""
    labels = np.asarray(labels)
    n = len(labels)
    angles = 2 * np.pi * np.arange(n) / n
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    classes = np.unique(labels)
    colours = CLASS_COLOURS(np.searchsorted(classes, labels) % 20)
    figure, axis = plt.subplots(figsize=(5, 5))
    for i in range(n):
        for j in range(i + 1, n):
            same = labels[i] == labels[j]
            axis.plot(*points[[i, j]].T, color=colours[i] if same else "lightgray", linewidth=1.4 if same else 0.3,
                      alpha=0.9 if same else 0.6, zorder=2 if same else 1)
    axis.scatter(points[:, 0], points[:, 1], s=140, c=colours, edgecolors="black", zorder=3)
    axis.scatter(points[:, 0] * 1.09, points[:, 1] * 1.09, s=60, facecolors="none", edgecolors="gray", zorder=3)
    axis.set_aspect("equal")
    axis.axis("off")
    axis.set_title(f"{title}\n(coloured edges: same class; gray: different classes; rings: self-loops)",
                   fontsize=10)
    return figure


# ---------------------------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------------------------


def class_order(labels) -> tuple[np.ndarray, np.ndarray]:
    """Indices that sort samples by class (stable) and the positions where a new class starts."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    boundaries = np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1
    return order, boundaries


def _draw_class_boundaries(axis, sorted_labels: np.ndarray) -> None:
    boundaries = np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1
    for boundary in boundaries:
        axis.axhline(boundary - 0.5, color="white", linewidth=0.8)
        axis.axvline(boundary - 0.5, color="white", linewidth=0.8)


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


def same_class_attention_share(attention, labels) -> np.ndarray:
    """Per layer and head: the share of attention to *other* samples that stays within the class.

    attention: (L, H, N, N) or (H, N, N); labels (N,). Returns (L, H) (or (H,)): the mean over
    queries i of ``sum_{j != i, same class} a_ij / sum_{j != i} a_ij``. A head that ignores
    classes scores about (K - 1) / (N - 1) on a P×K batch; one that only looks at its class, 1.
    """
    attention = np.asarray(attention, dtype=np.float64)
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    others = ~np.eye(len(labels), dtype=bool)
    within = (attention * (same & others)).sum(-1)
    total = (attention * others).sum(-1)
    return (within / np.maximum(total, 1e-12)).mean(-1)


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
    for boundary in view.boundaries:
        heat.axhline(boundary - 0.5, color="white", linewidth=0.7)
        heat.axvline(boundary - 0.5, color="white", linewidth=0.7)
    row_position = int(np.flatnonzero(view.order == view.query)[0])
    heat.axhline(row_position, color="cyan", linewidth=1.2, alpha=0.8)
    heat.set_xlabel("attended sample j (sorted by class)")
    heat.set_ylabel("query sample i (sorted by class)")
    heat.set_title(title or f"attention weights a_ij, layer {view.layer + 1}, head {view.head + 1}", fontsize=10)
    colour_axis = figure.add_subplot(grid[:, 1])
    figure.colorbar(shown, cax=colour_axis)
    query_axis = figure.add_subplot(grid[0, 3])
    _thumbnail(query_axis, images[view.query], f"query {view.query}", frame="cyan")
    for position, (index, weight) in enumerate(zip(view.top, view.top_weights)):
        axis = figure.add_subplot(grid[1, 3 + position])
        same = labels[index] == labels[view.query]
        _thumbnail(axis, images[int(index)], f"{weight:.3f}" + (" (self)" if index == view.query else ""),
                   frame="tab:green" if same else "tab:red")
    figure.text(0.66, 0.06, "most attended (weight; green: same class)", fontsize=9)
    return figure


def _require_widgets():
    try:
        import ipywidgets
    except ImportError as error:  # pragma: no cover - ipywidgets is a dependency
        raise ImportError("the explorers need ipywidgets: pip install ipywidgets") from error
    return ipywidgets


class _Explorer:
    """Shared widget plumbing: sliders on top, an HTML caption, the figure as a PNG image.

    Subclasses create their sliders, call :meth:`_assemble`, and implement ``update()``, which
    computes what to show (stored in ``current``) and hands a figure and a caption to :meth:`_show`.
    """

    def _assemble(self, rows: list[list], css_class: str) -> None:
        widgets = _require_widgets()
        self.caption = widgets.HTML()
        self.image = widgets.Image(format="png")
        for row in rows:
            for slider in row:
                slider.observe(lambda change: self.update(), names="value")
        self.widget = widgets.VBox([widgets.HBox(row) for row in rows if row] + [self.caption, self.image])
        self.widget.add_class(css_class)
        self.current = None
        self.update()

    def _show(self, figure: Figure, caption: str) -> None:
        self.image.value = figure_to_png(figure)
        plt.close(figure)
        self.caption.value = caption

    def update(self):  # pragma: no cover - every explorer defines it
        raise NotImplementedError

    def _ipython_display_(self) -> None:  # displaying the explorer shows its widget
        from IPython.display import display

        display(self.widget)


class AttentionExplorer(_Explorer):
    """Sliders for epoch (optional), layer, head and query over captured attention.

    ``snapshots``: list of ``(epoch, attention (L, H, N, N))`` (as recorded by
    :class:`~mpn_tutorial.training.AttentionCapture`), ``images`` (N, C, H, W), ``labels`` (N,).
    Moving a slider calls :meth:`update`, which recomputes :attr:`current` (an
    :class:`AttentionView`), redraws :attr:`image` and rewrites :attr:`caption`.
    """

    def __init__(self, snapshots, images, labels, top_k: int = 5) -> None:
        widgets = _require_widgets()
        self.snapshots = [(int(epoch), np.asarray(attention)) for epoch, attention in snapshots]
        self.images, self.labels, self.top_k = images, np.asarray(labels), top_k
        num_layers, num_heads, n, _ = self.snapshots[-1][1].shape
        epochs = [epoch for epoch, _ in self.snapshots]
        style = {"description_width": "60px"}
        self.epoch_slider = widgets.SelectionSlider(options=epochs, value=epochs[-1], description="epoch",
                                                    continuous_update=False, style=style)
        self.layer_slider = widgets.IntSlider(value=1, min=1, max=num_layers, description="layer",
                                              continuous_update=False, style=style)
        self.head_slider = widgets.IntSlider(value=1, min=1, max=num_heads, description="head",
                                             continuous_update=False, style=style)
        self.query_slider = widgets.IntSlider(value=0, min=0, max=n - 1, description="query",
                                              continuous_update=False, style=style)
        first_row = ([self.epoch_slider] if len(epochs) > 1 else []) + ([self.layer_slider] if num_layers > 1 else [])
        self._assemble([first_row, [self.head_slider, self.query_slider]], "attention-explorer")

    def update(self) -> AttentionView:
        epoch = self.epoch_slider.value
        attention = dict(self.snapshots)[epoch]
        self.current = attention_view(attention, self.labels, self.layer_slider.value - 1,
                                      self.head_slider.value - 1, self.query_slider.value, self.top_k)
        figure = plot_attention_view(self.current, self.images, self.labels,
                                     title=f"epoch {epoch}: layer {self.current.layer + 1}, "
                                     f"head {self.current.head + 1}")
        self._show(figure, f"<b>epoch {epoch}</b> · {self.current.caption}")
        return self.current


class HeadsExplorer(_Explorer):
    """A slider over the number of heads that shows every head's attention map and the model's R@1.

    ``results``: ``{num_heads: (attention (L, H, N, N), test Recall@1)}`` for models trained with
    1, 2, 4, 8 heads on the same batch ``labels`` (N,).
    """

    def __init__(self, results: dict[int, tuple[np.ndarray, float]], labels) -> None:
        widgets = _require_widgets()
        self.results = {int(h): (np.asarray(a), float(r)) for h, (a, r) in sorted(results.items())}
        self.labels = np.asarray(labels)
        options = list(self.results)
        self.heads_slider = widgets.SelectionSlider(options=options, value=options[0], description="heads",
                                                    continuous_update=False)
        self._assemble([[self.heads_slider]], "heads-explorer")

    def update(self) -> dict:
        heads = self.heads_slider.value
        attention, recall = self.results[heads]
        shares = same_class_attention_share(attention[0], self.labels)
        self.current = {"heads": heads, "recall@1": recall, "same_class_share": shares}
        figure = plot_heads(attention[0], self.labels, shares, title=f"{heads} head(s): test R@1 {100 * recall:.1f}%")
        self._show(figure, f"<b>{heads} head(s)</b> · test R@1 {100 * recall:.1f}% · same-class share per head: "
                   + ", ".join(f"{100 * s:.0f}%" for s in shares))
        return self.current


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
        for boundary in boundaries:
            axis.axhline(boundary - 0.5, color="white", linewidth=0.5)
            axis.axvline(boundary - 0.5, color="white", linewidth=0.5)
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


# ---------------------------------------------------------------------------------------------
# Embeddings across training
# ---------------------------------------------------------------------------------------------


def umap_across_training(snapshots, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
                         reference: int = -1) -> list[tuple[int, np.ndarray]]:
    """2-D UMAP coordinates of every snapshot on one fixed map.

    The map is fit **once**, on snapshot ``reference`` (default: the last, where the classes are
    best separated), and every snapshot is placed on it with ``transform``, so positions can be
    compared across epochs. Snapshots very unlike the reference (an untrained network's) land in a
    few blobs: the map has no place for them. (Fitting on all snapshots together instead makes each
    epoch an island of its own, because the whole embedding drifts during training.)
    Deterministic: a fixed ``random_state`` makes UMAP single-threaded. Returns ``[(epoch, (N, 2))]``.
    """
    import umap

    snapshots = [(epoch, np.asarray(embeddings, dtype=np.float32)) for epoch, embeddings in snapshots]
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric="cosine", random_state=seed,
                        transform_seed=seed, n_jobs=1)
    reducer.fit(snapshots[reference][1])
    return [(epoch, reducer.transform(embeddings)) for epoch, embeddings in snapshots]


def frame_limits(frames) -> tuple[tuple[float, float], tuple[float, float]]:
    points = np.concatenate([coordinates for _, coordinates in frames])
    low, high = np.percentile(points, 0.5, axis=0), np.percentile(points, 99.5, axis=0)
    margin = 0.05 * (high - low)
    return (low[0] - margin[0], high[0] + margin[0]), (low[1] - margin[1], high[1] + margin[1])


def plot_embedding_frame(coordinates, labels, epoch: int, limits=None, note: str = "", axis=None) -> Figure:
    """Scatter of 2-D coordinates coloured by class, for one epoch."""
    labels = np.asarray(labels)
    figure = None
    if axis is None:
        figure, axis = plt.subplots(figsize=(5.2, 5))
    classes = np.unique(labels)
    colours = CLASS_COLOURS(np.searchsorted(classes, labels) % 20)
    axis.scatter(coordinates[:, 0], coordinates[:, 1], c=colours, s=7, alpha=0.8, linewidths=0)
    if limits is not None:
        axis.set_xlim(*limits[0])
        axis.set_ylim(*limits[1])
    axis.set_xlabel("UMAP 1")
    axis.set_ylabel("UMAP 2")
    axis.set_title(f"test-class embeddings, epoch {epoch}" + (f"\n{note}" if note else ""), fontsize=10)
    return figure if figure is not None else axis.figure


class EpochExplorer(_Explorer):
    """An epoch slider over 2-D embedding frames (from :func:`umap_across_training`).

    ``notes`` maps an epoch to a caption line (e.g. its validation Recall@1).
    """

    def __init__(self, frames, labels, notes: dict[int, str] | None = None) -> None:
        widgets = _require_widgets()
        self.frames = dict(frames)
        self.labels = np.asarray(labels)
        self.notes = notes or {}
        self.limits = frame_limits(frames)
        epochs = list(self.frames)
        self.epoch_slider = widgets.SelectionSlider(options=epochs, value=epochs[0], description="epoch",
                                                    continuous_update=False)
        self._assemble([[self.epoch_slider]], "epoch-explorer")

    def update(self) -> dict:
        epoch = self.epoch_slider.value
        coordinates = self.frames[epoch]
        note = self.notes.get(epoch, "")
        self.current = {"epoch": epoch, "coordinates": coordinates}
        figure = plot_embedding_frame(coordinates, self.labels, epoch, self.limits, note)
        self._show(figure, f"<b>epoch {epoch}</b>" + (f" · {note}" if note else ""))
        return self.current


def export_animation(frames, labels, path: str | Path, notes: dict[int, str] | None = None, fps: float = 2.0,
                     dpi: int = 80) -> Path:
    """Write the frames as an animated GIF (one frame per epoch, fixed axes) and return its path."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    path = Path(path)
    notes = notes or {}
    limits = frame_limits(frames)
    figure, axis = plt.subplots(figsize=(5.2, 5))

    def draw(index: int):
        axis.clear()
        epoch, coordinates = frames[index]
        plot_embedding_frame(coordinates, labels, epoch, limits, notes.get(epoch, ""), axis=axis)
        return []

    animation = FuncAnimation(figure, draw, frames=len(frames), blit=False)
    temporary = path.with_name(path.name + ".partial.gif")
    animation.save(temporary, writer=PillowWriter(fps=fps), dpi=dpi)
    temporary.replace(path)
    plt.close(figure)
    return path
