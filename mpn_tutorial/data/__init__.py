"""Datasets, the P×K batch sampler, class splits and image transforms.

- :class:`GlyphDataset`: the offline default, rendered from matplotlib's fonts (glyphs.py)
- :class:`CUB200`, :class:`Cars196`, :class:`StanfordOnlineProducts`, :class:`InShop`: the four
  benchmarks, read from their original archives (benchmarks.py; how to get them: fetch.py and
  data/README.md)
- :class:`PKSampler`: batches of P classes × K samples (sampler.py)
"""

from mpn_tutorial.data.benchmarks import CUB200, Cars196, DatasetError, InShop, StanfordOnlineProducts
from mpn_tutorial.data.glyphs import GlyphDataset
from mpn_tutorial.data.sampler import PKSampler
from mpn_tutorial.data.splits import ClassSubset, carve_validation_classes

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
