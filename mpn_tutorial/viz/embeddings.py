"""Embeddings across training: one UMAP map for every epoch, drawn frame by frame."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from mpn_tutorial.viz.figures import CLASS_COLOURS


def umap_across_training(snapshots, seed: int = 0, reference: int = -1) -> list[tuple[int, np.ndarray]]:
    """2-D UMAP coordinates of every snapshot on one fixed map: ``[(epoch, (N, 2))]``.

    The map is fit **once**, on snapshot ``reference`` (default: the last, where the classes are best
    separated), and every snapshot is placed on it with ``transform``, so positions compare across epochs
    (a map fit on all snapshots together makes each epoch an island: the whole embedding drifts during
    training). Snapshots very unlike the reference (an untrained network's) land in a few blobs.
    Deterministic: a fixed ``random_state`` makes UMAP single-threaded.
    """
    import umap

    snapshots = [(epoch, np.asarray(embeddings, dtype=np.float32)) for epoch, embeddings in snapshots]
    reducer = umap.UMAP(n_neighbors=15, min_dist=0.1, metric="cosine", random_state=seed, transform_seed=seed,
                        n_jobs=1)
    reducer.fit(snapshots[reference][1])
    return [(epoch, reducer.transform(embeddings)) for epoch, embeddings in snapshots]


def frame_limits(frames) -> tuple[tuple[float, float], tuple[float, float]]:
    points = np.concatenate([coordinates for _, coordinates in frames])
    low, high = np.percentile(points, 0.5, axis=0), np.percentile(points, 99.5, axis=0)
    margin = 0.05 * (high - low)
    return (low[0] - margin[0], high[0] + margin[0]), (low[1] - margin[1], high[1] + margin[1])


FRAME_SIZE = (7.4, 5.6)  # inches: at 90 dpi a 666 × 504 px image, slider and map on one 1000 px screen
MAX_FRAMES_WIDTH = 10.4  # inches: at 90 dpi 936 px, inside JupyterLab's notebook column on a 1400 px screen


def plot_embedding_frame(coordinates, labels, epoch: int, limits=None, note: str = "", axis=None,
                         names=None, legend: bool = True) -> Figure:
    """Scatter of 2-D coordinates coloured by class, for one epoch, with a legend of the classes
    (``names[label]``, e.g. the glyphs' characters; default: the label numbers)."""
    labels = np.asarray(labels)
    if axis is None:
        _, axis = plt.subplots(figsize=FRAME_SIZE)
    classes = np.unique(labels)
    colours = CLASS_COLOURS(np.searchsorted(classes, labels) % 20)
    axis.scatter(coordinates[:, 0], coordinates[:, 1], c=colours, s=12, alpha=0.8, linewidths=0)
    if limits is not None:
        axis.set(xlim=limits[0], ylim=limits[1])
    axis.set_xlabel("UMAP 1", fontsize=11)
    axis.set_ylabel("UMAP 2", fontsize=11)
    axis.set_title(f"test-class embeddings, epoch {epoch}" + (f"\n{note}" if note else ""), fontsize=12)
    if legend:
        handles = [plt.Line2D([], [], marker="o", linestyle="", color=CLASS_COLOURS(index % 20),
                              label=str(names[label]) if names is not None else str(label))
                   for index, label in enumerate(classes)]
        axis.legend(handles=handles, title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=10,
                    ncol=2 if len(classes) > 12 else 1, frameon=False, handletextpad=0.2, columnspacing=0.6)
    return axis.figure


def plot_embedding_frames(coordinates: dict[str, np.ndarray], labels, epoch: int, limits=None, names=None) -> Figure:
    """One epoch of several runs on one map, side by side: ``{title: (N, 2) coordinates}`` (one title "": a
    single frame), the legend of the classes beside the last."""
    titles = list(coordinates)
    width = FRAME_SIZE[0] * (0.78 * len(titles) + 0.22)
    scale = min(1.0, MAX_FRAMES_WIDTH / width)  # several runs: smaller panels, so the image fits the notebook's column
    figure, axes = plt.subplots(1, len(titles), figsize=(scale * width, scale * FRAME_SIZE[1]), squeeze=False,
                                layout="constrained")
    for axis, title in zip(axes[0], titles):
        plot_embedding_frame(coordinates[title], labels, epoch, limits, title, axis=axis, names=names,
                             legend=title == titles[-1])
    return figure
