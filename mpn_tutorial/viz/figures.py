"""Figures of data, retrieval, pairs and triplets, training curves, ablations and the model itself: every
function returns a matplotlib ``Figure`` (testable without a browser)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from mpn_tutorial.metrics import nearest_neighbours

CLASS_COLOURS = plt.get_cmap("tab20")


def draw_thumbnail(axis, image, title: str | None = None, frame: str | None = None) -> None:
    """A (C, H, W) or (H, W) image (tensor or array) without ticks, framed in colour ``frame`` if given."""
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    if array.ndim == 3:  # undo ImageNet normalisation roughly for display
        array = (array - array.min()) / max(array.max() - array.min(), 1e-8)
    grey = np.ndim(image) != 3 or np.shape(image)[0] == 1
    axis.imshow(array, cmap="gray", vmin=0 if grey else None, vmax=1 if grey else None)
    axis.set(xticks=[], yticks=[])
    if title:
        axis.set_title(title, fontsize=8)
    for spine in axis.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set(color=frame, linewidth=3)


def class_order(labels) -> tuple[np.ndarray, np.ndarray]:
    """Indices that sort samples by class (stable) and the positions where a new class starts."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    return order, np.flatnonzero(sorted_labels[1:] != sorted_labels[:-1]) + 1


def draw_class_boundaries(axis, boundaries, linewidth: float = 0.8) -> None:
    """White lines between the classes of a class-sorted N×N matrix drawn with ``imshow``."""
    for boundary in boundaries:
        axis.axhline(boundary - 0.5, color="white", linewidth=linewidth)
        axis.axvline(boundary - 0.5, color="white", linewidth=linewidth)


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
        for column, axis in enumerate(axes[row]):
            if column < len(members):
                draw_thumbnail(axis, dataset[int(members[column])][0])
            else:
                axis.axis("off")
        name = f"'{names[label]}' (U+{ord(names[label]):04X})" if names is not None else f"class {label}"
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
    figure.suptitle(f"{len(classes)} classes × {per_class} images", fontsize=11)
    figure.tight_layout()
    return figure


def show_retrievals(dataset, embeddings, queries: Sequence[int], k: int = 6, title: str = "") -> Figure:
    """Each row: a query, then its k nearest neighbours; green frame = same class, red = other class."""
    neighbours = nearest_neighbours(embeddings, k, queries)
    labels = np.asarray(dataset.labels)
    figure, axes = plt.subplots(len(queries), k + 1, figsize=((k + 1) * 0.95, len(queries) * 1.0), squeeze=False)
    for row, query in enumerate(queries):
        draw_thumbnail(axes[row, 0], dataset[int(query)][0], "query" if row == 0 else None, frame="black")
        for column, neighbour in enumerate(neighbours[row].tolist(), start=1):
            same = labels[neighbour] == labels[query]
            draw_thumbnail(axes[row, column], dataset[neighbour][0], f"#{column}" if row == 0 else None,
                       frame="tab:green" if same else "tab:red")
    figure.suptitle(title or "nearest neighbours (green: same class, red: other class)", fontsize=10)
    figure.tight_layout()
    return figure


def show_pairs(embeddings, labels, title: str = "pairs in a P×K batch") -> Figure:
    """Left: which pairs are positive / negative; right: their distances, both sorted by class."""
    from mpn_tutorial.losses import pair_masks, pairwise_distances

    labels = torch.as_tensor(labels)
    order = torch.argsort(labels, stable=True)
    positive, negative = pair_masks(labels[order])
    kind = positive.numpy().astype(float) - negative.numpy()  # 1: a positive pair, -1: a negative pair, 0: itself
    distances = pairwise_distances(torch.as_tensor(embeddings, dtype=torch.float32)[order]).detach().numpy()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4))
    left.imshow(kind, cmap="coolwarm_r", vmin=-1.5, vmax=1.5)
    left.set_title("positive pairs (blue), negative pairs (red)", fontsize=10)
    shown = right.imshow(distances, cmap="viridis")
    right.set_title("distance between embeddings", fontsize=10)
    figure.colorbar(shown, ax=right, fraction=0.046)
    for axis in (left, right):
        axis.set(xlabel="sample j (sorted by class)", ylabel="sample i (sorted by class)")
        draw_class_boundaries(axis, class_order(labels[order].numpy())[1], linewidth=0.8)
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
    columns = (("anchor", anchors, "black"), ("positive", positives, "tab:green"), ("negative", negatives, "tab:red"))
    for row in range(rows):
        for column, (name, indices, colour) in enumerate(columns):
            draw_thumbnail(axes[row, column], images[int(indices[row])], name if row == 0 else None, frame=colour)
    if rows == 0:
        for axis in axes[0]:
            axis.axis("off")
        axes[0, 1].set_title("no triplet chosen", fontsize=9)
    figure.suptitle(title or f"{len(anchors)} triplets", fontsize=10)
    figure.tight_layout()
    return figure


def plot_histories(histories: dict[str, list[dict]]) -> Figure:
    """One line per run: validation Recall@1 (``val_recall@1`` of ``callbacks.flatten``) against the epoch."""
    from mpn_tutorial.callbacks import flatten

    figure, axis = plt.subplots(figsize=(6, 3.6))
    for name, history in histories.items():
        rows = [flatten(row) for row in history]
        axis.plot([row["epoch"] for row in rows], [row["val_recall@1"] for row in rows], marker="o", label=name)
    axis.set(xlabel="epoch", ylabel="validation Recall@1", title="validation recall@1 during training")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    return figure


def plot_batch_graph(labels, title: str = "a P×K batch as a fully connected graph") -> Figure:
    """Samples of a batch on a circle, coloured by class, every pair joined (self-loops drawn as rings)."""
    labels = np.asarray(labels)
    n = len(labels)
    angles = 2 * np.pi * np.arange(n) / n
    points = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    colours = CLASS_COLOURS(np.searchsorted(np.unique(labels), labels) % 20)
    figure, axis = plt.subplots(figsize=(5, 5))
    for i in range(n):
        for j in range(i + 1, n):
            same = labels[i] == labels[j]
            axis.plot(*points[[i, j]].T, color=colours[i] if same else "0.45", linewidth=2.2 if same else 0.7,
                      alpha=0.95 if same else 0.55, zorder=2 if same else 1)
    axis.scatter(points[:, 0], points[:, 1], s=140, c=colours, edgecolors="black", zorder=3)
    axis.scatter(points[:, 0] * 1.09, points[:, 1] * 1.09, s=60, facecolors="none", edgecolors="gray", zorder=3)
    axis.set_aspect("equal")
    axis.axis("off")
    axis.set_title(f"{title}\n(coloured edges: same class; gray: different classes; rings: self-loops)",
                   fontsize=10)
    return figure


def plot_architecture(config=None) -> Figure:
    """The model as boxes and arrows: what trains, what the MPN sees, what retrieval uses at test time.
    ``config`` (a TrainConfig) fills in the dimensions, heads and layers; without it, symbols."""
    dim, heads, layers = (("D-d", "H heads", "× L") if config is None else
                          (f"{config.embedding_dim}-d", f"{config.mpn_heads} heads", f"× {config.mpn_layers}"))
    backbone = {"glyph_cnn": "glyph CNN", "resnet18": "ResNet-18", "resnet50": "ResNet-50"}.get(
        getattr(config, "backbone", ""), "backbone")
    figure, axis = plt.subplots(figsize=(11, 4.2))
    axis.set(xlim=(0, 11), ylim=(0, 4.2))
    axis.axis("off")

    def arrow(start, end, colour="black"):
        axis.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle="->", color=colour, linewidth=1.2))

    def box(x, y, text, colour, width=1.55, arrow_from=None):
        """A box at (x, y); ``arrow_from``: where the arrow into the middle of its left side starts."""
        axis.add_patch(plt.Rectangle((x, y), width, 0.7, facecolor=colour, edgecolor="black", linewidth=1))
        axis.text(x + width / 2, y + 0.35, text, ha="center", va="center", fontsize=8.5)
        if arrow_from is not None:
            arrow(arrow_from, (x, y + 0.35))
        return x + width, y + 0.35

    test_colour, train_colour, mpn_colour = "#cde8cd", "#e4e4e4", "#fde2b8"
    right, middle = box(0.1, 1.75, "P×K images", "white", 1.2)
    box(1.6, 1.75, f"{backbone}\nmax pooling", test_colour, 1.5, (right, middle))
    box(3.45, 1.75, f"linear: embedding\ne ({dim})", test_colour, 1.7, (3.1, middle))
    box(5.6, 3.05, "backbone classifier\n(linear)", train_colour, 1.9, (5.15, middle + 0.2))
    box(7.9, 3.05, r"$\mathrm{CE}_\varepsilon(z^b / T)$", train_colour, 1.4, (7.5, 3.4))
    box(5.6, 1.75, "L2-normalise", test_colour, 1.3, (5.15, middle))
    axis.text(7.45, 1.97, "retrieval at\ntest time", fontsize=8.5, color="darkgreen", ha="left", va="center")
    arrow((6.9, middle + 0.1), (7.4, 2.0), "darkgreen")
    box(5.6, 0.45, f"MPN: linear, then\nattention over the batch\n({heads}) {layers}", mpn_colour, 2.2)
    arrow((6.25, 1.75), (6.25, 1.15))
    box(8.2, 0.45, "BNNeck\nclassifier", train_colour, 1.1, (7.8, 0.8))
    box(9.65, 0.45, r"$\mathrm{CE}_\varepsilon(z^m / T)$", train_colour, 1.3, (9.3, 0.8))
    axis.text(9.5, 2.2, "L = sum of\nthe two terms", fontsize=8.5, ha="center", va="center")
    axis.text(0.1, 0.1, "green: used at test time   gray: training only   orange: message passing (training only)",
              fontsize=8.5)
    axis.set_title("the model: both cross-entropies train the backbone; retrieval uses only the normalised "
                   "backbone embedding", fontsize=10)
    return figure


def plot_reported_results(values: dict[str, float], title: str, metric: str = "Recall@1 (%)") -> Figure:
    """Horizontal bars of one metric for runs of one setting (``{label: value}``), e.g. a benchmark's paper
    number beside the reproductions of it: like with like, never numbers of different problems."""
    figure, axis = plt.subplots(figsize=(7.5, 0.55 * len(values) + 1.3), layout="constrained")
    positions = np.arange(len(values))
    axis.barh(positions, list(values.values()), color="tab:gray")
    for position, value in zip(positions, values.values()):
        axis.text(value + 0.3, position, f"{value:.1f}", va="center", fontsize=10)
    axis.set_yticks(positions, list(values))
    axis.invert_yaxis()
    axis.set(xlim=(0, 100), xlabel=metric)
    axis.set_title(title, fontsize=11)
    axis.grid(axis="x", alpha=0.3)
    return figure


def plot_budget_curve(study: dict, live: dict[str, float] | None = None) -> Figure:
    """The messages study's budget curve: validation R@1 of every variant against the training steps (left),
    and the seed-paired test R@1 of both presets' messages on minus off against the steps (right, mean ± std
    over seeds, the noise band at the converged budget shaded around zero). ``live``: ``{label: steps}`` marks
    a notebook's own short runs on the steps axis."""
    pairs = {"published": "published, messages off", "glyphs-attention": "glyphs-attention, messages off"}
    curve = study["budget_curve"]
    steps = [int(s) for s in curve]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    names = [name for name in next(iter(curve.values())) if "unused" not in name]
    for name in names:
        values = [np.array([run["val_recall@1"] for run in curve[str(s)][name]]) for s in steps
                  if name in curve[str(s)]]
        left.errorbar(steps[:len(values)], [100 * v.mean() for v in values], yerr=[100 * v.std(ddof=1) for v in values],
                      marker="o", capsize=3, label=name)
    for index, (on, off) in enumerate(pairs.items()):
        gaps = []
        for s in steps:
            by_seed = {run["seed"]: run["test_recall@1"] for run in curve[str(s)][off]}
            gaps.append(np.array([100 * (run["test_recall@1"] - by_seed[run["seed"]]) for run in curve[str(s)][on]
                                  if run["seed"] in by_seed]))
        offset = (index - 0.5) * 0.04  # side by side on the log axis
        right.errorbar([s * (1 + offset) for s in steps], [g.mean() for g in gaps],
                       yerr=[g.std(ddof=1) if len(g) > 1 else 0 for g in gaps], marker="o", capsize=3,
                       label=f"{on}: on − off")
    band = study.get("noise_band", {}).get("band", {}).get("test_recall@1")
    if band is not None:
        right.axhspan(-100 * band, 100 * band, color="gray", alpha=0.2, label="noise band at B* (per seed)")
    right.axhline(0, color="black", linewidth=0.8)
    converged = study.get("converged_budget", {}).get("steps")
    for axis in (left, right):
        axis.set_xscale("log", base=2)
        axis.set_xticks(steps, [str(s) for s in steps])
        axis.set_xlabel("training steps (8×6 batches)")
        axis.grid(alpha=0.3)
        if converged:
            axis.axvline(converged, color="tab:green", linestyle="--", linewidth=1)
        for label, at in (live or {}).items():
            axis.axvline(at, color="tab:red", linestyle=":", linewidth=1)
            axis.text(at, axis.get_ylim()[0], f" {label}", color="tab:red", fontsize=8, rotation=90, va="bottom")
    seeds = ", ".join(str(run["seed"]) for run in next(iter(curve.values()))[names[0]])
    left.set_ylabel("validation R@1 (%), mean ± std over seeds")
    left.set_title("training to convergence" + (f" (dashed: B* = {converged} steps)" if converged else ""))
    left.legend(fontsize=9)
    right.set_ylabel("test R@1, messages on − off (points)")
    right.set_title(f"what the messages change, by budget (seeds {seeds}, paired)")
    right.legend(fontsize=9)
    figure.tight_layout()
    return figure


def plot_class_similarity(figure1: dict[str, list[dict]], pairs: dict[str, str]) -> Figure:
    """The paper's Figure 1 claim, measured (``bench/lesson_study.py``, ``evaluation.class_similarity``):
    per model, the gap between same-class and other-class cosine similarity at each stage of the MPN,
    mean ± std over seeds. ``pairs``: ``{model: its messages-off control}``, one panel each; the model's
    own layer with its messages set to 0 is drawn too."""
    figure, axes = plt.subplots(1, len(pairs), figsize=(5.4 * len(pairs), 4.2), squeeze=False, sharey=True,
                                layout="constrained")
    stages = ["backbone", "input map", "layer 1"]
    for axis, (model, control) in zip(axes[0], pairs.items()):
        lines = ((model, "layer 1", "tab:orange", f"{model}: its messages"),
                 (model, "layer 1, messages off", "tab:purple", f"{model}: the same layer, messages 0"),
                 (control, "layer 1", "tab:gray", f"{control} (trained without)"))
        for name, last, colour, label in lines:
            gaps = np.array([[run["class_similarity"][stage]["gap"] for stage in stages[:-1] + [last]]
                             for run in figure1[name]])
            axis.errorbar(np.arange(3) + 0.04 * (colour == "tab:gray"), gaps.mean(0), yerr=gaps.std(0, ddof=1),
                          color=colour, marker="o", capsize=3, label=label)
        axis.set_xticks(range(3), ["the MPN's\ninput", "after the\ninput map", "after the\nlayer"])
        axis.set_title(model)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=9, loc="lower left")
    axes[0, 0].set_ylabel("same-class minus other-class\nmean cosine similarity")
    figure.suptitle("is a sample more like its own class after message passing? (test classes, mean ± std "
                    "over seeds)")
    return figure


def plot_paired_differences(section: dict, band: dict[str, float], names=None,
                            keys: Sequence[str] = ("test_recall@1", "test_map@r")) -> Figure:
    """A family of seed-paired comparisons (``tools.stats.compare``, in ``section["comparisons"]``): per
    variant, the mean of its per-seed differences to its control (points) with its standard error, next to
    the noise band's threshold for that many seeds (shaded, ±2 · band / √n). Filled markers count
    (significant after Holm and beyond the band). ``names``: the variants in the order drawn."""
    comparisons = section["comparisons"]
    names = [name for name in (names or comparisons) if name in comparisons]
    figure, axes = plt.subplots(1, len(keys), figsize=(6.2 * len(keys), 0.55 * len(names) + 1.8), squeeze=False,
                                sharey=True, layout="constrained")
    for axis, key in zip(axes[0], keys):
        for row, name in enumerate(names):
            found = comparisons[name][key]
            threshold = 200 * band[key] / np.sqrt(found["n"])
            axis.fill_between([-threshold, threshold], row - 0.4, row + 0.4, color="gray", alpha=0.25, linewidth=0)
            counts = found["p_holm"] < 0.05 and bool(found["beyond_noise"])
            axis.errorbar(100 * found["mean"], row, xerr=100 * found["std"] / np.sqrt(found["n"]), marker="o",
                          color="tab:blue", markerfacecolor="tab:blue" if counts else "white", capsize=3)
        axis.axvline(0, color="black", linewidth=0.8)
        axis.set_yticks(range(len(names)), [f"{name}\nagainst {comparisons[name][key]['control']}"
                                            for name in names], fontsize=9)
        axis.set_xlabel(f"Δ {key.removeprefix('test_').replace('recall@1', 'R@1').replace('map@r', 'MAP@R')} "
                        "(points), mean ± standard error over seeds")
        axis.grid(axis="x", alpha=0.3)
    axes[0, 0].invert_yaxis()  # the first variant on top (the axes share it: invert once)
    axes[0, 0].set_title("gray: the noise band's threshold; filled: the difference counts", fontsize=10, loc="left")
    return figure
