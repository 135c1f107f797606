"""Datasets, the P×K batch sampler, class splits and image transforms.

- :class:`GlyphDataset`: the offline default, rendered from matplotlib's fonts (glyphs.py)
- :class:`CUB200`, :class:`Cars196`, :class:`StanfordOnlineProducts`, :class:`InShop`: the four
  benchmarks, read from their original archives (benchmarks.py; how to get them: data/README.md)
- :class:`PKSampler`: batches of P classes × K samples (sampler.py)

The benchmark readers are imported on first use: they need torchvision and PIL, which a glyph run
never loads (a second at start-up).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mpn_tutorial.data.glyphs import GlyphDataset
from mpn_tutorial.data.sampler import PKSampler
from mpn_tutorial.data.splits import ClassSubset, carve_validation_classes

if TYPE_CHECKING:
    from mpn_tutorial.data.benchmarks import CUB200, Cars196, DatasetError, InShop, StanfordOnlineProducts

_BENCHMARK_NAMES = ("CUB200", "Cars196", "DatasetError", "InShop", "StanfordOnlineProducts")

__all__ = [
    "CUB200",
    "Cars196",
    "ClassSubset",
    "DatasetError",
    "GlyphDataset",
    "InShop",
    "PKSampler",
    "StanfordOnlineProducts",
    "carve_validation_classes",
]


def __getattr__(name: str):
    if name in _BENCHMARK_NAMES:
        return getattr(importlib.import_module("mpn_tutorial.data.benchmarks"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
