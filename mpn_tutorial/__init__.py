"""mpn_tutorial: deep metric learning with message passing over the mini-batch.

A teaching re-implementation of Seidenschwarz, Elezi and Leal-Taixé, "Learning Intra-Batch
Connections for Deep Metric Learning" (ICML 2021). Modules, one concept each:

- ``data``: the offline glyph dataset, the four benchmark readers, the P×K batch sampler
- ``backbones``, ``models``: the CNNs, :class:`~mpn_tutorial.models.MessagePassingLayer` (the attention), the model
- ``losses``: contrastive, triplet (with mining), label-smoothed cross-entropy, the paper's objective
- ``metrics``: Recall@K, MAP@R, R-precision, NMI, attention's same-class share
- ``config``, ``presets``, ``evaluation``, ``callbacks``, ``training``: a run's settings, the named ones,
  measuring and watching a run, the training loop
- ``notebook``, ``viz``: what the notebooks use on top; ``tools``: the machinery (``tools/__init__.py``)

Importing the package changes nothing in the process (``tools/runtime.py``).
"""

__version__ = "0.1.0"
