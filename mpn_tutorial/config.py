"""The settings of a training run: :class:`TrainConfig`. Presets (``presets.py``) fill it per dataset. Every
field is declared once with :func:`~mpn_tutorial.tools.settings.setting` (default, help, range, flag)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mpn_tutorial.controls import StudyConfig, StudyModel, check_study, is_study
from mpn_tutorial.data.build import DataConfig
from mpn_tutorial.data.glyphs import MIN_IMAGES_PER_CLASS, check_glyph_settings
from mpn_tutorial.errors import UsageError
from mpn_tutorial.evaluation import EVAL_BATCH_SIZE
from mpn_tutorial.losses import BACKBONE_LOSS_WEIGHT, MPN_LOSS_WEIGHT, check_loss_weights
from mpn_tutorial.miners import MINING_STRATEGIES
from mpn_tutorial.models import MetricLearningModel, ModelConfig, check_heads, check_layers
from mpn_tutorial.tools.settings import check_setting, is_machinery, setting

LOSSES = ("contrastive", "triplet", "ce", "mpn")
LR_SCHEDULES = ("step", "cosine")
# One fused kernel (or one op per group) instead of a Python loop over ~40 parameter tensors, whose overhead
# dominated the MPN's cost on CPU (fused Adam on the CPU needs torch 2.4, the lower bound in pyproject.toml).
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda parameters, **options: torch.optim.Adam(parameters, fused=True, **options),
    "radam": lambda parameters, **options: torch.optim.RAdam(parameters, foreach=True, **options),
    "adamw": lambda parameters, **options: torch.optim.AdamW(parameters, fused=True, **options),
    "sgd": lambda parameters, **options: torch.optim.SGD(parameters, momentum=0.9, **options),
}


def _preset_names() -> tuple[str, ...]:
    from mpn_tutorial.presets import PRESETS  # presets.py builds on this module

    return tuple(PRESETS)


@dataclass
class TrainConfig(DataConfig, ModelConfig, StudyConfig):
    """Every setting of a training run: the data (``DataConfig``), the model (``ModelConfig``), the studies'
    options (``StudyConfig``), and the fields below."""

    preset: str = setting("glyphs", "the named configuration the run starts from (presets.py); the flags change "
                          "it", choices=_preset_names)
    loss: str = setting("mpn", "contrastive, triplet, ce (cross-entropy alone) or mpn (cross-entropy + message "
                        "passing)", choices=LOSSES)
    # losses
    temperature: float = setting(0.1, "of the cross-entropy on both classifiers' logits (published: 0.1-0.6)", above=0)
    label_smoothing: float = setting(0.1, "of the cross-entropy", low=0, below=1)
    backbone_loss_weight: float = setting(BACKBONE_LOSS_WEIGHT, "weight of the backbone classifier's cross-entropy",
                                          low=0)
    mpn_loss_weight: float = setting(MPN_LOSS_WEIGHT, "weight of the MPN classifier's cross-entropy", low=0)
    triplet_margin: float = setting(0.2, "margin of the triplet loss", above=0)
    triplet_mining: str = setting("hard", "which triplets the triplet loss uses", choices=MINING_STRATEGIES)
    contrastive_margin: float = setting(0.5, "margin of the contrastive loss", above=0)
    # optimisation
    optimizer: str = setting("adam", "the optimizer", choices=tuple(OPTIMIZERS))
    lr: float = setting(1e-3, "learning rate", above=0, hint="e.g. 1e-3 (glyphs) or 1e-4 (published)")
    weight_decay: float = setting(0.0, "weight decay", low=0)
    epochs: int = setting(12, "epochs of training", low=1)
    batches_per_epoch: int | None = setting(50, "P×K batches per epoch (none: one pass over the training images)",
                                            low=1)
    lr_schedule: str = setting("step", "step: × lr-decay-factor at each of lr-decay-epochs; cosine: from lr to 0 "
                               "over the run", choices=LR_SCHEDULES)
    lr_decay_epochs: tuple[int, ...] = setting((), "epochs after which the step schedule decays the learning rate",
                                               low=1)
    lr_decay_factor: float = setting(0.1, "factor of each step decay", above=0, high=1)
    reload_best_after: tuple[int, ...] = setting((), "epochs after which the best model so far (by validation R@1) is "
                                                 "loaded again before training goes on (the release reloads its best "
                                                 "checkpoint at its learning-rate drops); as with lr_decay_epochs, an "
                                                 "epoch the run does not reach does nothing", low=1)
    classes_per_batch: int = setting(8, "P of a P×K batch", low=2, hint="a batch needs negatives: P >= 2")
    samples_per_class: int = setting(6, "K of a P×K batch", low=2, hint="a batch needs positives: K >= 2")
    seed: int = setting(0, "the run's seed: initialisation, batches, dropout, augmentation", low=0)
    amp: bool = setting(False, "bf16 autocast (CUDA only); it changes the numerics, so it is part of the run")
    attention_batches: int = setting(4, "fixed validation-class P×K batches on which the attention is measured after "
                                     "every epoch (0: none)", low=0)
    # machinery: where and how fast, never what
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", pattern=r"auto|cpu|cuda(:\d+)?", machinery=True)
    num_workers: int = setting(0, "data-loading processes", low=0, machinery=True)
    eval_batch_size: int = setting(EVAL_BATCH_SIZE, "images per batch when embedding a dataset", low=1, machinery=True)
    channels_last: bool = setting(False, "memory layout of the convolutions (CUDA only)", machinery=True)

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed (unknown names raise)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UsageError(f"unknown TrainConfig fields {unknown}; see mpn_tutorial/config.py for the fields")
        return dataclasses.replace(self, **changes)

    def without_messages(self) -> TrainConfig:
        """The messages-off control of this run: the same MPN head, initialisation and batches, but no sample
        receives anything from the others (the message warm-up, then moot, is set to 0)."""
        return self.replace(mpn_attention="none", message_warmup_epochs=0)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from ``to_dict`` output (tuples stored as lists are turned back into tuples)."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UsageError(f"unknown TrainConfig fields {unknown}")
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in values.items()})

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
        """Raise a UsageError naming the first setting no run can have, and what would work: every
        field's range (its declaration), then the rules that tie fields together."""
        for field in dataclasses.fields(self):
            check_setting(field, getattr(self, field.name))
        if self.dataset == "glyphs" and self.backbone != "glyph_cnn":
            raise UsageError(f"backbone {self.backbone!r} takes RGB benchmark images; the glyphs are one-channel 32 px "
                             "images: use backbone 'glyph_cnn' (or a benchmark preset for a ResNet)")
        if self.dataset == "glyphs":
            check_glyph_settings(self.image_size, MIN_IMAGES_PER_CLASS)
        if self.backbone != "glyph_cnn" and self.image_size < 32:
            raise UsageError(f"image_size must be at least 32 for a ResNet (227 published), got {self.image_size}")
        if self.loss == "mpn":
            check_layers(self.mpn_layers, self.concat_layers)
            if self.mpn_layers > 0:
                check_heads(self.embedding_dim, self.mpn_heads)
            check_loss_weights(self.backbone_loss_weight, self.mpn_loss_weight)
        check_study(self)
        if self.loss == "mpn" and self.message_warmup_epochs > self.epochs - 1:
            raise UsageError(f"message_warmup_epochs must be at most epochs - 1 = {self.epochs - 1}, got "
                             f"{self.message_warmup_epochs}: messages must be on for at least the last epoch")


def names_run(name: str) -> bool:
    """Whether a field, when changed, names a different run: it changes what is computed and is not a
    file path (a path would nest folders). From the field's declaration."""
    setting = next((f for f in dataclasses.fields(TrainConfig) if f.name == name), None)
    return setting is not None and not is_machinery(setting) and not setting.metadata.get("path")


def create_model(config: TrainConfig, num_classes: int) -> MetricLearningModel:
    """A freshly initialised model for ``config`` and ``num_classes`` training classes, on the CPU: the
    published one (``models.py``) or the one a study's options describe (``controls.StudyModel``). Initialised
    from ``config.seed`` on a forked random number generator, so the global one is left as it was."""
    model = StudyModel if is_study(config) else MetricLearningModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return model(config, num_classes if config.loss in ("ce", "mpn") else 0,
                     in_channels=1 if config.dataset == "glyphs" else 3, mpn_head=config.loss == "mpn")


def _comparable(value):
    return tuple(value) if isinstance(value, list) else value
