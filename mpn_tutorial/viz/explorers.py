"""Widget explorers: sliders over what the figures show (the only module that imports ipywidgets)."""

from __future__ import annotations

import base64
import io
import re

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from mpn_tutorial.viz.attention import AttentionView, attention_view, plot_attention_view
from mpn_tutorial.viz.embeddings import frame_limits, plot_embedding_frames
from mpn_tutorial.viz.figures import class_order


class _Explorer:
    """Shared widget plumbing: sliders on top, an HTML caption, the figure as a PNG image. Subclasses create their
    sliders, call :meth:`_assemble`, and implement ``update()``, which the sliders call: it computes what to show
    with a library function, keeps it in ``current`` (what the tests check), and hands a figure and a caption to
    :meth:`_show`."""

    def _assemble(self, rows: list[list], css_class: str) -> None:
        import ipywidgets as widgets
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
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        png = buffer.getvalue()
        self.image.value = png
        # its own width (from the PNG header): stretched to the notebook's width it would blur and grow past the screen
        self.image.width = str(int.from_bytes(png[16:20], "big"))
        plt.close(figure)
        self.caption.value = caption

    def _ipython_display_(self) -> None:
        """The widget, and for a static page (the site, a notebook read without a kernel) the picture it starts
        with: JupyterLab shows the widget, a static renderer the PNG."""
        from IPython.display import display

        bundle = dict(self.widget._repr_mimebundle_())
        bundle["image/png"] = base64.b64encode(self.image.value).decode()
        caption = re.sub(r"<[^>]+>", "", self.caption.value)
        bundle["text/plain"] = f"{type(self).__name__} (sliders in JupyterLab): {caption}"
        display(bundle, raw=True)


class AttentionExplorer(_Explorer):
    """Sliders for epoch (optional), layer, head and query over captured attention; ``current`` is an
    :class:`AttentionView`. ``snapshots``: list of ``(epoch, attention (L, H, N, N))`` (as recorded by
    :class:`~mpn_tutorial.callbacks.AttentionCapture`), ``images`` (N, C, H, W), ``labels`` (N,). The sliders
    count from 1; the query slider counts the rows of the class-sorted heat map (row 1 at the top)."""

    def __init__(self, snapshots, images, labels, top_k: int = 5) -> None:
        import ipywidgets as widgets

        self.snapshots = [(int(epoch), np.asarray(attention)) for epoch, attention in snapshots]
        self.images, self.labels, self.top_k = images, np.asarray(labels), top_k
        num_layers, num_heads, n, _ = self.snapshots[-1][1].shape
        epochs = [epoch for epoch, _ in self.snapshots]

        def slider(description: str, most: int, width: str = "60px"):  # every slider counts from 1
            return widgets.IntSlider(value=1, min=1, max=most, description=description, continuous_update=False,
                                     style={"description_width": width})

        self.epoch_slider = widgets.SelectionSlider(options=epochs, value=epochs[-1], description="epoch",
                                                    continuous_update=False, style={"description_width": "60px"})
        self.layer_slider, self.head_slider = slider("layer", num_layers), slider("head", num_heads)
        self.query_slider = slider("query row", n, "70px")  # row 1 is the top of the sorted heat map
        self.order, _ = class_order(self.labels)  # row r (from 1) of the sorted map is batch sample order[r - 1]
        first_row = ([self.epoch_slider] if len(epochs) > 1 else []) + ([self.layer_slider] if num_layers > 1 else [])
        self._assemble([first_row, [self.head_slider, self.query_slider]], "attention-explorer")

    def update(self) -> AttentionView:
        epoch = self.epoch_slider.value
        attention = dict(self.snapshots)[epoch]
        self.current = attention_view(attention, self.labels, self.layer_slider.value - 1,
                                      self.head_slider.value - 1, int(self.order[self.query_slider.value - 1]),
                                      self.top_k)
        figure = plot_attention_view(self.current, self.images, self.labels,
                                     title=f"epoch {epoch}: layer {self.current.layer + 1}, "
                                     f"head {self.current.head + 1}")
        self._show(figure, f"<b>epoch {epoch}</b> · {self.current.caption}")
        return self.current


class EpochExplorer(_Explorer):
    """An epoch slider over 2-D embedding frames (from :func:`umap_across_training`); ``frames`` is one run's
    list of ``(epoch, (N, 2))``, or ``{title: frames}`` of several runs on one map, drawn side by side. ``notes``
    maps an epoch to a caption line (e.g. its validation Recall@1); ``start`` is the epoch the slider starts on
    (the first by default), so the view a page shows can be where the learning shows."""

    def __init__(self, frames, labels, notes: dict[int, str] | None = None, names=None,
                 start: int | None = None) -> None:
        import ipywidgets as widgets

        runs = frames if isinstance(frames, dict) else {"": frames}
        self.runs = {title: dict(run) for title, run in runs.items()}
        self.labels, self.notes, self.names = np.asarray(labels), notes or {}, names
        self.limits = frame_limits([frame for run in runs.values() for frame in run])
        epochs = list(next(iter(self.runs.values())))
        if start is not None and start not in epochs:
            raise ValueError(f"start={start} is not an epoch of these frames ({epochs}); pass one of them or None")
        self.epoch_slider = widgets.SelectionSlider(options=epochs, value=epochs[0] if start is None else start,
                                                    description="epoch", continuous_update=False)
        self._assemble([[self.epoch_slider]], "epoch-explorer")

    def update(self) -> dict:
        epoch = self.epoch_slider.value
        note = self.notes.get(epoch, "")
        self.current = {"epoch": epoch, "coordinates": {title: run[epoch] for title, run in self.runs.items()}}
        figure = plot_embedding_frames(self.current["coordinates"], self.labels, epoch, self.limits, self.names)
        self._show(figure, f"<b>epoch {epoch}</b>" + (f" · {note}" if note else ""))
        return self.current
