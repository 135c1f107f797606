"""The notebooks' store of finished runs: train once, and every later notebook (or a re-run) loads it.

A stored run's key (:func:`cache_key`) holds everything training depends on (the configuration, the
thread count, torch's and numpy's versions, the library's training code), so a stored run is exactly
what training again would give. An entry holds the best model, its history and metrics, and the
recordings of the callbacks that watched it, so notebook 04 can show the attention notebook 03 recorded.

A **shared store** (``shared_dir``), e.g. one a teacher filled before class, is only read: a run missing
from a student's own store is looked up there, and a run trained anew goes to the student's own store.
Entries are written atomically, so a reader sees a whole entry or none.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from mpn_tutorial.callbacks import AttentionCapture, Callback, EmbeddingSnapshots, EpochEvaluation
from mpn_tutorial.config import TrainConfig
from mpn_tutorial.data.build import Datasets, sample_batch
from mpn_tutorial.data.splits import ClassSubset
from mpn_tutorial.errors import MissingFileError, UsageError
from mpn_tutorial.tools.checkpoints import CheckpointError, load_checkpoint, model_from, save_checkpoint
from mpn_tutorial.tools.runtime import thread_count
from mpn_tutorial.training import TrainResult, train

PACKAGE = Path(__file__).resolve().parents[1]  # the mpn_tutorial folder


def training_modules() -> list[Path]:
    """The library's source files a stored run depends on: this module and everything it imports from the
    package, directly or not, found by reading their import statements. Not the notebooks' helpers, the
    exercises, the figures or the command line: editing those keeps the stored runs."""
    seen: dict[str, Path] = {}
    pending = ["mpn_tutorial.tools.run_store"]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        relative = Path(*name.split(".")[1:])
        path = PACKAGE / relative / "__init__.py" if (PACKAGE / relative).is_dir() else PACKAGE / f"{relative}.py"
        if not path.is_file():
            continue
        seen[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:  # relative: from . import x
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
                pending += [module] + [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mpn_tutorial"):
                pending += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                pending += [alias.name for alias in node.names if alias.name.startswith("mpn_tutorial")]
        if path.name != "__init__.py" and "." in package:  # a module's package runs its __init__ first
            pending.append(package)
    return sorted(set(seen.values()))


@lru_cache(maxsize=1)
def library_fingerprint() -> str:
    """A hash of the source of :func:`training_modules`, read once per process (the code this process runs):
    part of every run's key, so a learner who edits the model gets a new run, never the old one."""
    digest = hashlib.sha256()
    for path in training_modules():
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cache_key(config: TrainConfig) -> str:
    """A stable name for a configuration's run, from its computed settings, the thread count (CPU results depend
    on it), torch's and numpy's versions and the library's training code (:func:`library_fingerprint`)."""
    settings = config.computed_settings()
    settings.update(threads=thread_count(), library=library_fingerprint(), torch=torch.__version__,
                    numpy=np.__version__)
    text = json.dumps(settings, sort_keys=True, default=list)
    return f"{config.preset}-{config.loss}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _fingerprint(*arrays) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(np.asarray(array)).tobytes())
    return digest.hexdigest()[:16]


def recording_key(callback: Callback) -> str:
    """What a callback records, as a name: its kind and a fingerprint of the data it watches."""
    if isinstance(callback, EmbeddingSnapshots):
        dataset = callback.dataset
        images = dataset.images if getattr(dataset, "in_memory", False) else None
        content = (np.asarray(dataset.labels),) + ((images.numpy(),) if images is not None else ())
        return f"embeddings-every{callback.every}-{_fingerprint(*content)}"
    if isinstance(callback, AttentionCapture):
        return f"attention-{_fingerprint(callback.images.numpy(), callback.labels.numpy())}"
    if isinstance(callback, EpochEvaluation):
        return f"evaluation-k{'-'.join(map(str, callback.ks))}-{_fingerprint(np.asarray(callback.dataset.labels))}"
    raise UsageError(f"the run store keeps the recordings of EmbeddingSnapshots, AttentionCapture and EpochEvaluation, "
                    f"not of {type(callback).__name__}")


def train_cached(config: TrainConfig, cache_dir: str | os.PathLike, callbacks: Sequence[Callback] = (),
                 datasets: Datasets | None = None, progress: bool = True,
                 shared_dir: str | os.PathLike | None = None) -> TrainResult:
    """:func:`~mpn_tutorial.training.train`, or its stored result when the same configuration ran before:
    looked up in ``cache_dir`` (the caller's own store), then in ``shared_dir`` (only read). A missing recording
    of a callback, or an unreadable entry, trains the run again into ``cache_dir`` (keeping the old recordings)."""
    name = f"{cache_key(config)}.pt"
    own = Path(cache_dir) / name
    stores = [own]
    if shared_dir is not None and Path(shared_dir).resolve() != Path(cache_dir).resolve():
        stores.append(Path(shared_dir) / name)
    wanted = {recording_key(callback): callback for callback in callbacks}
    recorded: dict = {}  # the recordings of the same run found in either store, kept in the new entry
    for path in stores:
        entry = _stored_run(path, config)
        if entry is None:
            continue
        if set(wanted) <= set(entry["callbacks"]):
            for key, callback in wanted.items():
                callback.load_state_dict(entry["callbacks"][key])
            return TrainResult(config, model_from(entry, config, path), list(entry["history"]),
                               int(entry["best_epoch"]), dict(entry["val_metrics"]), dict(entry["test_metrics"]),
                               float(entry["seconds"]))
        recorded = {**entry["callbacks"], **recorded}
    result = train(config, callbacks=list(callbacks), datasets=datasets, progress=progress)
    recorded.update({key: callback.state_dict() for key, callback in wanted.items()})
    save_checkpoint(own, config, result.model, result.model.num_classes, history=result.history,
                    best_epoch=result.best_epoch, val_metrics=result.val_metrics, test_metrics=result.test_metrics,
                    seconds=result.seconds, callbacks=recorded)
    return result


_ENTRY_FIELDS = {"history", "best_epoch", "val_metrics", "test_metrics", "seconds", "callbacks"}


def _stored_run(path: Path, config: TrainConfig) -> dict | None:
    """The entry at ``path`` when it is a readable run of ``config``; None when it is missing,
    damaged, foreign or unreadable (the file is left as it is)."""
    try:
        entry = load_checkpoint(path)
    except (CheckpointError, MissingFileError):
        return None
    if not _ENTRY_FIELDS <= set(entry) or config.differences(entry["config"]):
        return None  # a checkpoint of another kind (a best.pt copied here) or of another run
    return entry


def tutorial_recorders(datasets: Datasets) -> dict[str, Callback]:
    """The recordings the notebooks make while training an MPN (so later notebooks share one run):
    ``"attention"``, :class:`AttentionCapture` on one fixed 8×6 batch of **test** classes (what the attention
    does on classes the model never trained on); ``"embeddings"``, :class:`EmbeddingSnapshots` of the first
    20 test classes."""
    test = datasets.evaluation
    images, labels = sample_batch(test, 8, 6, seed=0)
    subset = ClassSubset(test, np.arange(min(20, test.num_classes)))
    return {"attention": AttentionCapture(images, torch.as_tensor(labels)), "embeddings": EmbeddingSnapshots(subset)}
