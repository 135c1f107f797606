"""The settings of a training run: :class:`TrainConfig`. Presets (``presets.py``) fill it per dataset.

A config is a plain dataclass: ``config.replace(lr=1e-4)`` gives a changed copy, ``to_dict`` /
``from_dict`` store it in checkpoints, and :meth:`TrainConfig.validate` refuses settings no run
can have, with a message that names the field, the value and what would work (the command line
and the notebooks show the same messages).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from mpn_tutorial.data.build import DATASET_NAMES
from mpn_tutorial.losses import MINING_STRATEGIES
from mpn_tutorial.models import ModelConfig

LOSSES = ("contrastive", "triplet", "ce", "mpn")
# Settings that change where or how fast a run computes, not what it computes.
MACHINERY_FIELDS = ("data_root", "device", "num_workers", "eval_batch_size", "checkpointing", "channels_last")
BACKBONES = ("glyph_cnn", "resnet18", "resnet50")
OPTIMIZERS = ("adam", "radam", "adamw", "sgd")


@dataclass
class TrainConfig:
    """Every setting of a training run. Presets (``presets.py``) fill it for each dataset."""

    preset: str = "glyphs"
    dataset: str = "glyphs"  # glyphs | cub | cars | sop | inshop
    data_root: str = "data"
    image_size: int = 32
    val_fraction: float = 0.2  # share of training classes held out for validation
    data_seed: int = 0  # glyph rendering and class split; `seed` below is for the training run
    loss: str = "mpn"  # contrastive | triplet | ce | mpn
    # model (fields with the same name as in models.ModelConfig are copied into it)
    backbone: str = "glyph_cnn"
    glyph_channels: tuple[int, ...] = (32, 64, 128, 256)
    embedding_dim: int = 64
    pretrained: bool = False
    weights_path: str | None = None
    mpn_layers: int = 1
    mpn_heads: int = 2
    mpn_ff_dim: int = 2048
    mpn_dropout: float = 0.1
    zero_logit: bool = False
    concat_layers: bool = False
    mpn_pass_messages: bool = True  # False: the MPN head without message passing (ablation control)
    # attention that learns at small scale (models.py docstring, bench/attention_study.md); off as published
    mpn_input_scale: float = 1.0  # multiply the MPN's normalised input by this; sqrt(embedding_dim): unit coordinates
    mpn_identity_values: bool = False  # W_v and W_o start as the identity
    mpn_similarity_prior: bool = False  # W_q and W_k start as the identity
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
    # machinery
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 0
    eval_batch_size: int = 512
    amp: bool = False  # bf16 autocast (CUDA only)
    channels_last: bool = False  # CUDA only
    checkpointing: bool = False  # activation checkpointing of the ResNet stages

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}")
        values = dict(values)
        for name in ("glyph_channels", "lr_decay_epochs"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def differences(self, other: TrainConfig | dict) -> dict[str, tuple]:
        """``{field: (this value, other value)}`` for the fields that change what a run computes."""
        theirs = other.to_dict() if isinstance(other, TrainConfig) else dict(other)
        mine = self.to_dict()
        return {name: (value, theirs.get(name)) for name, value in mine.items()
                if name not in MACHINERY_FIELDS and _comparable(theirs.get(name)) != _comparable(value)}

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
        _check_int("mpn_layers", self.mpn_layers, 1 if self.loss == "mpn" else 0,
                   hint="loss 'mpn' needs at least one message-passing layer")
        _check_int("mpn_heads", self.mpn_heads, 1)
        if self.loss == "mpn" and self.embedding_dim % self.mpn_heads:
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

    def model_config(self, num_classes: int) -> ModelConfig:
        """The model this run trains, for ``num_classes`` training classes."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig) if hasattr(self, f.name)}
        shared.update(
            num_classes=num_classes if self.loss in ("ce", "mpn") else 0,
            in_channels=1 if self.dataset == "glyphs" else 3,
            glyph_channels=tuple(self.glyph_channels),
            mpn_layers=self.mpn_layers if self.loss == "mpn" else 0,
        )
        return ModelConfig(**shared)


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
