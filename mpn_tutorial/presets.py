"""Named training configurations: ``glyphs`` (the CPU default, minutes) and the published recipe.

The four benchmark presets restate the official release (dvl-tum/intra_batch): ImageNet-pretrained
ResNet-50, 512-d embedding, RAdam for 70 epochs with the learning rate divided by 10 after epoch 30,
227 px crops, the attention's softmax with an extra zero logit (the release's ``net/utils.py``), the best
model so far loaded again after epochs 30 and 50 (its ``trainer.py``), and per dataset the MPN's layers,
heads, temperature, P × K, learning rate and weight decay. On purpose unlike the release: the best epoch
is chosen on validation classes, never on test R@1; and ``sop`` trains the paper's objective, while
``sop-release`` is the release's SOP configuration (the backbone's label-smoothed cross-entropy alone).

The glyph preset was tuned on the glyph *validation* classes and keeps the standard softmax the
notebooks teach. ``glyphs-attention`` adds what the attention study (``bench/attention_study.md``)
found necessary for the attention to look at a sample's own class at CPU scale: the MPN's input scaled
up (× 2 sqrt(D), so scores start of order one), W_v and W_o initialised to the identity, and messages
switched on only after a warm-up of 5 of the 8 epochs. A glyph preset's 600 steps are the notebooks'
budget, short of where training plateaus: :func:`with_budget` trains a multiple of a preset's epochs.
"""

from __future__ import annotations

import math

from mpn_tutorial.config import TrainConfig
from mpn_tutorial.errors import UsageError

GLYPHS = TrainConfig(
    preset="glyphs",
    dataset="glyphs",
    image_size=32,
    loss="mpn",
    backbone="glyph_cnn",
    embedding_dim=128,
    mpn_layers=1,
    mpn_heads=2,
    mpn_ff_dim=512,
    temperature=0.2,
    triplet_mining="semihard",
    optimizer="adam",
    lr=1e-3,
    epochs=8,
    batches_per_epoch=75,
    lr_decay_epochs=(7,),
    classes_per_batch=8,
    samples_per_class=6,
)

# Input scale and warm-up chosen by the study on the validation classes (bench/attention_study.md, section 1).
GLYPHS_ATTENTION = GLYPHS.replace(
    preset="glyphs-attention",
    mpn_input_scale=2 * math.sqrt(GLYPHS.embedding_dim),
    mpn_identity_values=True,
    message_warmup_epochs=5,
)

# The layers' sizes (feed-forward 2048, dropout 0.1) are ModelConfig's defaults, the published ones.
_PUBLISHED = dict(
    zero_logit=True,  # the release's softmax: one extra logit of 0 in every row (models.py)
    image_size=227,
    val_fraction=0.1,
    loss="mpn",
    backbone="resnet50",
    embedding_dim=512,
    pretrained=True,
    optimizer="radam",
    epochs=70,
    batches_per_epoch=None,
    lr_decay_epochs=(30,),
    lr_decay_factor=0.1,
    num_workers=8,
    eval_batch_size=256,
    amp=True,
    channels_last=True,
    reload_best_after=(30, 50),
)

CUB = TrainConfig(preset="cub", dataset="cub", mpn_layers=1, mpn_heads=2, temperature=0.2,
                  classes_per_batch=6, samples_per_class=9, lr=1.56e-4, weight_decay=6.1e-6, **_PUBLISHED)
CARS = TrainConfig(preset="cars", dataset="cars", mpn_layers=2, mpn_heads=8, concat_layers=True, temperature=0.111,
                   classes_per_batch=10, samples_per_class=7, lr=3.67e-4, weight_decay=2.6e-9, **_PUBLISHED)
SOP = TrainConfig(preset="sop", dataset="sop", mpn_layers=1, mpn_heads=8, temperature=0.605,
                  classes_per_batch=15, samples_per_class=6, lr=2.47e-4, weight_decay=2.8e-13, **_PUBLISHED)
INSHOP = TrainConfig(preset="inshop", dataset="inshop", mpn_layers=1, mpn_heads=4, temperature=0.186,
                     classes_per_batch=14, samples_per_class=4, lr=1.13e-4, weight_decay=1.1e-7, **_PUBLISHED)

SOP_RELEASE = SOP.replace(preset="sop-release", loss="ce")  # the release's SOP config: its backbone's cross-entropy

PRESETS: dict[str, TrainConfig] = {c.preset: c for c in (GLYPHS, GLYPHS_ATTENTION, CUB, CARS, SOP, SOP_RELEASE, INSHOP)}

# Named multiples of a preset's epochs. "short" is what the notebooks' many-seed comparisons use.
BUDGETS: dict[str, float] = {"full": 1.0, "short": 0.5}


def get_preset(name: str, **changes) -> TrainConfig:
    """A copy of a preset, with optional field changes: ``get_preset("glyphs", loss="triplet")``."""
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].replace(**changes)


def with_budget(config: TrainConfig, budget: str | float) -> TrainConfig:
    """``config`` trained for a multiple of its epochs: a name of :data:`BUDGETS`, or a number (2: twice as
    long). The learning-rate decay, the reloads of the best model and the message warm-up move in proportion
    (rounded down, at least epoch 1 and at most the last epoch but one; a decay at epoch 0 is dropped)."""
    if isinstance(budget, str):
        if budget not in BUDGETS:
            raise UsageError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}, or a number")
        budget = BUDGETS[budget]
    if not budget > 0:
        raise UsageError(f"a budget is a positive multiple of the preset's epochs, got {budget!r}")
    epochs = max(1, round(config.epochs * budget))

    def scaled(epoch: int) -> int:
        return min(epochs - 1, max(1, math.floor(epoch * budget))) if epoch else 0

    def moved(epochs: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted({scaled(e) for e in epochs} - {0}))

    return config.replace(epochs=epochs, lr_decay_epochs=moved(config.lr_decay_epochs),
                          reload_best_after=moved(config.reload_best_after),
                          message_warmup_epochs=scaled(config.message_warmup_epochs))
