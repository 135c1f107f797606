"""The settings of a training run: :class:`TrainConfig`. Presets (``presets.py``) fill it per dataset.

One description, declared once: :class:`TrainConfig` extends the data part
(:class:`~mpn_tutorial.data.build.DataConfig`, what ``build_datasets`` reads) and the model part
(:class:`~mpn_tutorial.models.ModelConfig`, what ``MetricLearningModel`` reads) with the loss and
the optimisation. No field is declared twice. A field that only says where or how fast a run
computes is declared with ``runtime.machinery``; everything that compares runs derives from that:
:meth:`TrainConfig.computed_settings` (what names a stored run, ``run_store.cache_key``),
:meth:`TrainConfig.differences` (what ``--resume`` must match) and the command line's run names.

A config is a plain dataclass: ``config.replace(lr=1e-4)`` gives a changed copy, ``to_dict`` /
``from_dict`` store it in checkpoints, and :meth:`TrainConfig.validate` refuses settings no run
can have, with a message that names the field, the value and what would work (the command line
and the notebooks show the same messages).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mpn_tutorial.data.build import DATASET_NAMES, DataConfig
from mpn_tutorial.losses import MINING_STRATEGIES
from mpn_tutorial.models import ATTENTION_MODES, MetricLearningModel, ModelConfig
from mpn_tutorial.runtime import is_machinery, machinery

LOSSES = ("contrastive", "triplet", "ce", "mpn")
BACKBONES = ("glyph_cnn", "resnet18", "resnet50")
# One fused kernel (or one op per group) instead of a Python loop over ~40 parameter tensors: the
# MPN adds many small tensors, and per-tensor overhead dominated its cost on CPU.
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda parameters, **options: torch.optim.Adam(parameters, fused=True, **options),
    "radam": lambda parameters, **options: torch.optim.RAdam(parameters, foreach=True, **options),
    "adamw": lambda parameters, **options: torch.optim.AdamW(parameters, fused=True, **options),
    "sgd": lambda parameters, **options: torch.optim.SGD(parameters, momentum=0.9, **options),
}


@dataclass
class TrainConfig(DataConfig, ModelConfig):
    """Every setting of a training run: the data (``DataConfig``), the model (``ModelConfig``), and
    the fields below. Presets (``presets.py``) fill it for each dataset."""

    preset: str = "glyphs"
    loss: str = "mpn"  # contrastive | triplet | ce | mpn
    message_warmup_epochs: int = 0  # epochs trained with messages off (the MPN head alone) before they start
    # losses
    temperature: float = 0.1  # of the cross-entropy on both classifiers' logits
    label_smoothing: float = 0.1
    backbone_loss_weight: float = 1.0
    mpn_loss_weight: float = 1.0
    triplet_margin: float = 0.2
    triplet_mining: str = "hard"
    contrastive_margin: float = 0.5
    # optimisation
    optimizer: str = "adam"  # adam | radam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 12
    batches_per_epoch: int | None = 50  # None: len(train) // (P*K)
    lr_decay_epochs: tuple[int, ...] = ()
    lr_decay_factor: float = 0.1
    classes_per_batch: int = 8
    samples_per_class: int = 6
    seed: int = 0
    amp: bool = False  # bf16 autocast (CUDA only): changes the numerics, so it is part of the run
    # attention diagnostics after every epoch (evaluation.attention_diagnostics), on this many fixed
    # P×K batches of validation classes; 0: none
    attention_batches: int = 4
    # machinery
    device: str = machinery("auto")  # auto | cpu | cuda | cuda:N
    num_workers: int = machinery(0)
    eval_batch_size: int = machinery(512)
    channels_last: bool = machinery(False)  # memory layout of the convolutions (CUDA only)

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed (unknown names raise)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; see mpn_tutorial/config.py for the fields")
        return dataclasses.replace(self, **changes)

    def without_messages(self) -> TrainConfig:
        """The messages-off control of this run: the same MPN head, initialisation and batches, but no
        sample receives anything from the others (a message warm-up is then moot)."""
        return self.replace(mpn_pass_messages=False, message_warmup_epochs=0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from ``to_dict`` output; fields missing (older checkpoints) take their defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        values = dict(values)
        for name in ("glyph_channels", "lr_decay_epochs"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def computed_settings(self) -> dict:
        """The fields that decide what a run computes (all but the machinery fields), as a dict."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not is_machinery(f)}

    def differences(self, other: TrainConfig | dict) -> dict[str, tuple]:
        """``{field: (this value, other value)}`` for the fields that change what a run computes."""
        theirs = other.to_dict() if isinstance(other, TrainConfig) else dict(other)
        return {name: (value, theirs.get(name)) for name, value in self.computed_settings().items()
                if _comparable(theirs.get(name)) != _comparable(value)}

    @property
    def steps(self) -> int | None:
        """Training steps of the run (None when an epoch's length depends on the dataset)."""
        return None if self.batches_per_epoch is None else self.epochs * self.batches_per_epoch

    def validate(self) -> None:
        """Raise a ValueError naming the first setting no run can have, and what would work."""
        _check_choice("dataset", self.dataset, DATASET_NAMES)
        _check_choice("loss", self.loss, LOSSES)
        _check_choice("backbone", self.backbone, BACKBONES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("triplet_mining", self.triplet_mining, MINING_STRATEGIES)
        if self.dataset == "glyphs" and self.backbone != "glyph_cnn":
            raise ValueError(f"backbone {self.backbone!r} takes RGB benchmark images; the glyphs are one-channel 32 px "
                             "images: use backbone 'glyph_cnn' (or a benchmark preset for a ResNet)")
        smallest_image = 8 if self.backbone == "glyph_cnn" else 32
        _check_int("image_size", self.image_size, smallest_image,
                   hint="the glyph CNN needs at least 8 px, a ResNet at least 32 px (227 published)")
        if self.dataset == "glyphs":
            _check_int("image_size", self.image_size, 8, 64, hint="glyphs are rendered at 64 px; 32 is the default")
        _check_number("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True,
                      hint="the share of training classes held out for validation, e.g. 0.2")
        _check_int("data_seed", self.data_seed, 0)
        _check_int("seed", self.seed, 0)
        if not self.glyph_channels or any(not _is_int(c) or c < 1 for c in self.glyph_channels):
            raise ValueError(f"glyph_channels must be positive whole numbers, got {self.glyph_channels!r}")
        _check_int("embedding_dim", self.embedding_dim, 1, hint="e.g. 128 (glyphs) or 512 (published)")
        _check_int("mpn_layers", self.mpn_layers, 1 if self.concat_layers else 0,
                   hint="0 is the MPN head without message-passing layers; concat_layers needs at least 1")
        _check_int("mpn_heads", self.mpn_heads, 1)
        _check_choice("mpn_attention", self.mpn_attention, ATTENTION_MODES)
        if self.loss == "mpn" and self.mpn_layers > 0 and self.embedding_dim % self.mpn_heads:
            divisors = [h for h in range(1, min(self.embedding_dim, 16) + 1) if self.embedding_dim % h == 0]
            raise ValueError(
                f"embedding_dim={self.embedding_dim} must be divisible by mpn_heads={self.mpn_heads} (each head "
                f"works in embedding_dim / mpn_heads dimensions); heads that fit: {divisors}"
            )
        _check_int("mpn_ff_dim", self.mpn_ff_dim, 1)
        _check_number("mpn_input_scale", self.mpn_input_scale, 0, low_open=True,
                      hint=f"1 as published, sqrt(embedding_dim) = {math.sqrt(self.embedding_dim):.4g} for unit "
                      "coordinates")
        _check_number("mpn_dropout", self.mpn_dropout, 0, 1, high_open=True)
        _check_number("temperature", self.temperature, 0, low_open=True, hint="e.g. 0.2 (published: 0.1-0.6)")
        _check_number("label_smoothing", self.label_smoothing, 0, 1, high_open=True)
        _check_number("backbone_loss_weight", self.backbone_loss_weight, 0)
        _check_number("mpn_loss_weight", self.mpn_loss_weight, 0)
        if self.loss == "mpn" and self.backbone_loss_weight + self.mpn_loss_weight == 0:
            raise ValueError("backbone_loss_weight and mpn_loss_weight are both 0: nothing would be trained")
        _check_number("triplet_margin", self.triplet_margin, 0, low_open=True)
        _check_number("contrastive_margin", self.contrastive_margin, 0, low_open=True)
        _check_number("lr", self.lr, 0, low_open=True, hint="e.g. 1e-3 (glyphs) or 1e-4 (published)")
        _check_number("weight_decay", self.weight_decay, 0)
        _check_int("epochs", self.epochs, 1)
        if self.loss == "mpn":
            _check_int("message_warmup_epochs", self.message_warmup_epochs, 0, self.epochs - 1,
                       hint="messages must be on for at least the last epoch: lower --message-warmup-epochs")
        if self.batches_per_epoch is not None:
            _check_int("batches_per_epoch", self.batches_per_epoch, 1, hint="or None for one pass over the data")
        if any(not _is_int(e) or e < 1 for e in self.lr_decay_epochs):
            raise ValueError(f"lr_decay_epochs must be epoch numbers from 1, got {self.lr_decay_epochs!r}")
        _check_number("lr_decay_factor", self.lr_decay_factor, 0, 1, low_open=True)
        _check_int("classes_per_batch", self.classes_per_batch, 2, hint="a batch needs negatives: P >= 2")
        _check_int("samples_per_class", self.samples_per_class, 2, hint="a batch needs positives: K >= 2")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _check_int("num_workers", self.num_workers, 0)
        _check_int("eval_batch_size", self.eval_batch_size, 1)
        _check_int("attention_batches", self.attention_batches, 0)


def names_run(name: str) -> bool:
    """Whether a field, when changed, names a different run: it changes what is computed and is not a
    file path (a path would nest folders). From the field's declaration (``runtime.machinery``)."""
    setting = next((f for f in dataclasses.fields(TrainConfig) if f.name == name), None)
    return setting is not None and not is_machinery(setting) and not setting.metadata.get("path")


def create_model(config: TrainConfig, num_classes: int) -> MetricLearningModel:
    """A freshly initialised model for ``config`` and ``num_classes`` training classes, on the CPU.

    Initialised from ``config.seed`` alone, on a forked random number generator: the global one is
    left as it was, so building a model never changes what a notebook or test draws next.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return MetricLearningModel(config, num_classes if config.loss in ("ce", "mpn") else 0,
                                   in_channels=1 if config.dataset == "glyphs" else 3, mpn_head=config.loss == "mpn")


def _comparable(value):
    return tuple(value) if isinstance(value, list) else value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def _check_int(name: str, value, low: int, high: int | None = None, hint: str = "") -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        allowed = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be a whole number {allowed}, got {value!r}" + (f" ({hint})" if hint else ""))


def _check_number(name: str, value, low: float, high: float | None = None, low_open: bool = False,
                  high_open: bool = False, hint: str = "") -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high))
    if not ok:
        lower = f"{'above' if low_open else 'at least'} {low:g}"
        upper = "" if high is None else f" and {'below' if high_open else 'at most'} {high:g}"
        raise ValueError(f"{name} must be a number {lower}{upper}, got {value!r}" + (f" ({hint})" if hint else ""))
