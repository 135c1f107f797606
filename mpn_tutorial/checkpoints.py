"""Checkpoints: written atomically, loaded safely, and complete enough to resume a run exactly.

``save_checkpoint`` writes to a temporary file and renames it (``atomic.py``), so a process killed
while saving leaves the previous checkpoint intact. ``load_checkpoint`` uses
``torch.load(weights_only=True)``: a checkpoint is tensors, numbers, strings and containers of them,
never pickled code. A file that is not a checkpoint of this package gets one clear error.

A training checkpoint (``last.pt``) holds the model, optimizer and scheduler states, the history,
the best model so far and every random number generator's state (:func:`rng_state`), so that
resuming reproduces an uninterrupted run bit for bit on the CPU. ``best.pt`` holds the best model
by validation Recall@1 with its config; :func:`load_model` rebuilds it.
"""

from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path

import numpy as np
import torch

from mpn_tutorial.atomic import write_atomically
from mpn_tutorial.config import TrainConfig
from mpn_tutorial.models import MetricLearningModel

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A file is not a readable checkpoint of this package, or not one this run can use."""


def save_checkpoint(payload: dict, path: str | os.PathLike) -> Path:
    """``torch.save`` a checkpoint dictionary atomically (the format version is added)."""
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    return write_atomically(path, lambda file: torch.save(payload, file))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by this package, safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # a damaged zip, a truncated file, a pickle of arbitrary objects, ...
        # torch's own message suggests weights_only=False, which would run code from the file: never relay it
        raise CheckpointError(
            f"{path} is not a readable mpn_tutorial checkpoint: it is damaged (e.g. an interrupted copy) or "
            "holds objects other than tensors and numbers. Use a best.pt or last.pt written by "
            "`python -m mpn_tutorial train`."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "config" not in payload:
        raise CheckpointError(
            f"{path} is not an mpn_tutorial checkpoint (format {CHECKPOINT_FORMAT}); use a best.pt or last.pt "
            "written by `python -m mpn_tutorial train`"
        )
    return payload


def config_of(checkpoint: dict, path: str | os.PathLike) -> TrainConfig:
    """The run settings stored in a checkpoint."""
    try:
        return TrainConfig.from_dict(checkpoint["config"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path} holds settings this version cannot read ({error})") from None


def check_same_preset(checkpoint: dict, config: TrainConfig, path: str | os.PathLike) -> None:
    """Refuse a checkpoint trained with another preset or another model shape."""
    saved = checkpoint["config"]
    if saved.get("preset") != config.preset:
        raise CheckpointError(
            f"checkpoint {path} was trained with preset {saved.get('preset')!r}, not {config.preset!r}; "
            f"use --preset {saved.get('preset')} or another checkpoint directory"
        )
    for name in ("dataset", "backbone", "embedding_dim", "loss", "mpn_layers", "mpn_heads"):
        if saved.get(name) != getattr(config, name):
            raise CheckpointError(
                f"checkpoint {path} has {name}={saved.get(name)!r} but this run asks for "
                f"{getattr(config, name)!r}; use another checkpoint directory"
            )


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[MetricLearningModel, TrainConfig]:
    """Rebuild the model saved in a ``best.pt`` / ``last.pt`` checkpoint (in eval mode)."""
    checkpoint = load_checkpoint(path, map_location)
    config = config_of(checkpoint, path)
    return model_from(checkpoint, config, path), config


def model_from(checkpoint: dict, config: TrainConfig, path: str | os.PathLike) -> MetricLearningModel:
    """The model a loaded checkpoint (or run-store entry) holds, in eval mode."""
    # the weights come from the checkpoint: never fetch ImageNet weights for this
    model_config = dataclasses.replace(config.model_config(int(checkpoint["num_classes"])), pretrained=False)
    model = MetricLearningModel(model_config)
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(f"{path}: its weights do not fit the model its settings describe ({error})") from None
    return model.eval()


def model_state(model: torch.nn.Module) -> dict:
    """A CPU copy of a model's state dict (what checkpoints and the best-model slot hold)."""
    return {name: value.detach().clone().cpu() for name, value in model.state_dict().items()}


def rng_state() -> dict:
    """The state of every random number generator a run draws from (torch, CUDA, numpy, Python)."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_position": int(numpy_state[2]),
        "numpy_gauss": (int(numpy_state[3]), float(numpy_state[4])),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    has_gauss, cached = state["numpy_gauss"]
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_position"], has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
