"""The notebooks' one-line set-up: ``tutorial = start(preset="glyphs")``. Runs go through the run store
(``DATA/runs``), so a run trained by one notebook is loaded, not retrained, by the next.

With a benchmark's preset (``start(preset="cub")``) every notebook runs as far as its data allows: without
the data it stops at the first cell that needs it, with the reader's message that says how to get it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from functools import cached_property
from importlib.resources import files
from pathlib import Path

from mpn_tutorial.callbacks import Callback
from mpn_tutorial.config import TrainConfig
from mpn_tutorial.data.build import DATA_FIELDS, Datasets, build_datasets
from mpn_tutorial.errors import MissingFileError, UsageError
from mpn_tutorial.presets import get_preset
from mpn_tutorial.tools.run_store import train_cached
from mpn_tutorial.tools.runtime import pin_threads, thread_count
from mpn_tutorial.training import TrainResult

DATA_VARIABLE = "MPN_TUTORIAL_DATA"
RUNS_VARIABLE = "MPN_TUTORIAL_RUNS"  # another run store, e.g. an empty one to time the notebooks from scratch
SHARED_RUNS_VARIABLE = "MPN_TUTORIAL_SHARED_RUNS"  # a store only read, e.g. the one a teacher filled for a class
STUDIES = ("messages", "lesson")  # the studies whose results ship with the package (mpn_tutorial/results/)


def find_data_folder(start_at: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Where a notebook keeps its data and run store, and why there: ``$MPN_TUTORIAL_DATA`` when set; else the
    project's ``data`` folder, the nearest above (or at) the working directory that sits next to a ``notebooks``
    folder or a ``pyproject.toml`` (a clone of the repository); else (the package installed with pip, a notebook
    opened anywhere) the per-user folder ``$XDG_CACHE_HOME/mpn_tutorial`` (``~/.cache/mpn_tutorial`` by
    default), created on first use."""
    if os.environ.get(DATA_VARIABLE):
        return Path(os.environ[DATA_VARIABLE]), f"${DATA_VARIABLE}"
    here = Path(start_at or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / "data").is_dir() and ((folder / "notebooks").is_dir() or (folder / "pyproject.toml").is_file()):
            return Path(os.path.relpath(folder / "data")), "the project's data folder"
    user_folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mpn_tutorial"
    return user_folder, f"no project folder around {here}: the per-user data folder"


def load_study(name: str = "messages") -> dict:
    """The per-seed results of a study that ship with the package: ``"messages"``
    (``bench/messages_study.py``) or ``"lesson"`` (``bench/lesson_study.py``: pairs and triplets at the
    converged budget, and the paper's Figure 1 measured)."""
    if name not in STUDIES:
        raise UsageError(f"unknown study {name!r}; the package ships {', '.join(STUDIES)}")
    resource = files("mpn_tutorial") / "results" / f"{name}_study.json"
    if not resource.is_file():
        raise MissingFileError(f"the {name} study's results are missing from the installed package ({resource}); "
                                f"reinstall mpn_tutorial, or run `python bench/{name}_study.py` in the project")
    return json.loads(resource.read_text())


class Tutorial:
    """What a notebook works with: the preset's config, its datasets and the run store."""

    def __init__(self, config: TrainConfig, data: Path, found: str = "") -> None:
        self.config, self.data, self.found = config, data, found
        self.runs = Path(os.environ.get(RUNS_VARIABLE) or data / "runs")
        shared = os.environ.get(SHARED_RUNS_VARIABLE)
        self.shared_runs = Path(shared) if shared else None  # read when self.runs lacks a run, never written

    @cached_property
    def datasets(self) -> Datasets:
        """train / val / test of the preset (built on first use; the glyphs are generated once)."""
        return build_datasets(self.config)

    def preset(self, name: str, **changes) -> TrainConfig:
        """Another preset, with this tutorial's data folder."""
        return get_preset(name, data_root=str(self.data), **changes)

    def train(self, config: TrainConfig | None = None, recorders: Sequence[Callback] = ()) -> TrainResult:
        """Train a config (default: the preset's), or load it from the run store when it ran before."""
        config = self.config if config is None else config
        same_data = all(getattr(config, name) == getattr(self.config, name) for name in DATA_FIELDS)
        return train_cached(config, self.runs, callbacks=recorders, datasets=self.datasets if same_data else None,
                            progress=False, shared_dir=self.shared_runs)

    def recorders(self) -> dict[str, Callback]:
        """The recordings the notebooks make while an MPN trains (attention on a held-out batch, embeddings of
        20 test classes): ``tools.run_store.tutorial_recorders`` of this tutorial's datasets."""
        from mpn_tutorial.tools.run_store import tutorial_recorders

        return tutorial_recorders(self.datasets)

    def study(self, name: str = "messages") -> dict:
        """A study's per-seed numbers (:func:`load_study`)."""
        return load_study(name)

    def __repr__(self) -> str:
        where = f" ({self.found})" if self.found else ""
        shared = f" (also read from {self.shared_runs})" if self.shared_runs else ""
        return (f"preset {self.config.preset} · data in {self.data}{where} · trained runs kept in {self.runs}"
                f"{shared} · {thread_count()} CPU threads")


def start(preset: str = "glyphs", **changes) -> Tutorial:
    """Set up a notebook: threads pinned (a notebook is an entry point), figures inline, the preset applied
    to the data folder :func:`find_data_folder` finds (it says where)."""
    pin_threads()
    from IPython import get_ipython  # a dependency of JupyterLab

    shell = get_ipython()
    if shell is not None and hasattr(shell, "kernel"):
        shell.run_line_magic("matplotlib", "inline")
    data, found = find_data_folder()
    tutorial = Tutorial(get_preset(preset, data_root=str(data), **changes), data, found)
    print(tutorial)
    return tutorial
