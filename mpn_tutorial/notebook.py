"""The notebooks' one-line set-up: ``tutorial = start(preset="glyphs")``.

:func:`start` pins the CPU threads (importing the package does), finds the project's ``data/``
folder, applies a preset, shows figures inline, and returns a :class:`Tutorial` that builds the
datasets on first use and trains runs through the run store (``data/runs``), so a run trained by
one notebook is loaded, not retrained, by the next.

Change the preset to a benchmark (``start(preset="cub")``) and every notebook runs as far as its
data allows: without the data it stops at the first cell that needs it, with the reader's
"not found" message that says how to get the dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from mpn_tutorial.callbacks import Callback
from mpn_tutorial.config import TrainConfig
from mpn_tutorial.data.build import Datasets, build_datasets
from mpn_tutorial.presets import get_preset, with_budget
from mpn_tutorial.run_store import train_cached
from mpn_tutorial.runtime import thread_count
from mpn_tutorial.training import TrainResult

DATA_VARIABLE = "MPN_TUTORIAL_DATA"
RUNS_VARIABLE = "MPN_TUTORIAL_RUNS"  # another run store, e.g. an empty one to time the notebooks from scratch


def find_data_folder(start_at: str | os.PathLike | None = None) -> Path:
    """``$MPN_TUTORIAL_DATA``, else the ``data`` folder of the nearest folder above (or at) the
    working directory that has one next to a ``notebooks`` folder or a ``pyproject.toml``."""
    if os.environ.get(DATA_VARIABLE):
        return Path(os.environ[DATA_VARIABLE])
    here = Path(start_at or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / "data").is_dir() and ((folder / "notebooks").is_dir() or (folder / "pyproject.toml").is_file()):
            return Path(os.path.relpath(folder / "data"))
    raise FileNotFoundError(
        f"no project data/ folder found above {here}; start JupyterLab with `make lab` from the project, "
        f"or set {DATA_VARIABLE}=/path/to/data"
    )


class Tutorial:
    """What a notebook works with: the preset's config, its datasets and the run store."""

    def __init__(self, config: TrainConfig, data: Path) -> None:
        self.config = config
        self.data = data
        self.runs = Path(os.environ.get(RUNS_VARIABLE) or data / "runs")

    @cached_property
    def datasets(self) -> Datasets:
        """train / val / test of the preset (built on first use; the glyphs are generated once)."""
        return build_datasets(self.config)

    def budget(self, name: str, config: TrainConfig | None = None) -> TrainConfig:
        """The config (default: the preset's) shortened to a named budget of ``presets.BUDGETS``."""
        return with_budget(self.config if config is None else config, name)

    def preset(self, name: str, **changes) -> TrainConfig:
        """Another preset, with this tutorial's data folder."""
        return get_preset(name, data_root=str(self.data), **changes)

    def train(self, config: TrainConfig | None = None, recorders: Sequence[Callback] = ()) -> TrainResult:
        """Train a config (default: the preset's), or load it from the run store when it ran before."""
        config = self.config if config is None else config
        same_data = all(getattr(config, name) == getattr(self.config, name)
                        for name in ("dataset", "data_root", "image_size", "val_fraction", "data_seed"))
        return train_cached(config, self.runs, callbacks=recorders, datasets=self.datasets if same_data else None,
                            progress=False)

    def study(self) -> dict:
        """The attention study's per-seed numbers (``bench/attention_study.json`` next to this package,
        written by ``bench/attention_study.py``)."""
        path = Path(__file__).resolve().parents[1] / "bench" / "attention_study.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; run `python bench/attention_study.py` from the project "
                                    "to produce it (about an hour on 2 cores)")
        return json.loads(path.read_text())

    def __repr__(self) -> str:
        return (f"preset {self.config.preset} · data in {self.data} · trained runs kept in {self.runs} · "
                f"{thread_count()} CPU threads")


def start(preset: str = "glyphs", **changes) -> Tutorial:
    """Set up a notebook: threads pinned, figures inline, the preset applied to the project's data."""
    _show_figures_inline()
    data = find_data_folder()
    tutorial = Tutorial(get_preset(preset, data_root=str(data), **changes), data)
    print(tutorial)
    return tutorial


def _show_figures_inline() -> None:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython comes with JupyterLab
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "kernel"):
        shell.run_line_magic("matplotlib", "inline")
