"""Checkpoints: written atomically, loaded safely, and complete enough to resume a run exactly: ``last.pt``
holds everything resuming needs to reproduce an uninterrupted run bit for bit on the CPU (the random number
generators' states included, :func:`rng_state`); ``best.pt`` the best model by validation Recall@1."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch

from mpn_tutorial.config import TrainConfig, create_model
from mpn_tutorial.errors import CheckpointError, MissingFileError
from mpn_tutorial.models import MetricLearningModel
from mpn_tutorial.tools.atomic import write_atomically

CHECKPOINT_FORMAT = 4  # 4: the MPN's classifier belongs to the model (mpn_classifier), not to the network


def save_checkpoint(path: str | os.PathLike, config: TrainConfig, model: torch.nn.Module | dict, num_classes: int,
                    **contents) -> Path:
    """Write ``{"format", "config", "num_classes", "model", **contents}`` atomically. ``model``: a module or a
    state dict; ``contents``: what this kind of checkpoint adds (``last.pt``: optimizer, RNG state, history...;
    ``best.pt``: epoch and metrics), tensors, numbers, strings and containers of them only."""
    state = model if isinstance(model, dict) else model_state(model)
    payload = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "num_classes": int(num_classes),
               "model": state, **contents}
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # serialised in memory first: a full disk then fails in one plain write
    return write_atomically(path, lambda file: file.write(buffer.getbuffer()))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """The one reader: a checkpoint written by :func:`save_checkpoint`, loaded safely (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged zip, a truncated file, a pickle of arbitrary objects, ...
        # torch's own message suggests weights_only=False, which would run code from the file: never relay it
        raise CheckpointError(f"{path} is not a readable mpn_tutorial checkpoint: it is damaged (e.g. an interrupted "
                              "copy) or holds objects other than tensors and numbers. Use a best.pt or last.pt "
                              "written by `python -m mpn_tutorial train`.") from None
    if isinstance(payload, dict) and isinstance(payload.get("format"), int) and payload["format"] < CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} was written by an older version of mpn_tutorial (checkpoint format "
                              f"{payload['format']}, this version reads {CHECKPOINT_FORMAT}); train it again, or "
                              "evaluate it with the version that wrote it")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "config" not in payload:
        raise CheckpointError(f"{path} is not an mpn_tutorial checkpoint (format {CHECKPOINT_FORMAT}); use a best.pt "
                              "or last.pt written by `python -m mpn_tutorial train`")
    return payload


def config_of(checkpoint: dict, path: str | os.PathLike) -> TrainConfig:
    """The run settings stored in a checkpoint (fields it lacks take their defaults)."""
    try:
        return TrainConfig.from_dict(checkpoint["config"])
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path} holds settings this version cannot read ({error})") from None


def load_model(path: str | os.PathLike) -> tuple[MetricLearningModel, TrainConfig]:
    """Rebuild the model saved in a ``best.pt`` / ``last.pt`` checkpoint (in eval mode), on the CPU."""
    checkpoint = load_checkpoint(path)
    config = config_of(checkpoint, path)
    return model_from(checkpoint, config, path), config


def model_from(checkpoint: dict, config: TrainConfig, path: str | os.PathLike) -> MetricLearningModel:
    """The model a loaded checkpoint (or run-store entry) holds, in eval mode."""
    # the weights come from the checkpoint: never fetch ImageNet weights for this
    model = create_model(config.replace(pretrained=False), int(checkpoint["num_classes"]))
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
