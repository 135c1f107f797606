"""Datasets, the P×K batch sampler and image transforms."""

from mpn_tutorial.data.glyphs import GlyphDataset
from mpn_tutorial.data.sampler import PKSampler

__all__ = ["GlyphDataset", "PKSampler"]
