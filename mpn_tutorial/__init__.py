"""mpn_tutorial: deep metric learning with message passing over the mini-batch.

A teaching re-implementation of Seidenschwarz, Elezi and Leal-Taixé, "Learning Intra-Batch
Connections for Deep Metric Learning" (ICML 2021). Modules, one concept each:

- ``data``: the offline glyph dataset, the four benchmark readers, the P×K batch sampler
- ``backbones``, ``models``: the CNNs, :class:`~mpn_tutorial.models.MessagePassingLayer`
  (the attention over the batch), the full model
- ``losses``: contrastive, triplet (with mining), label-smoothed cross-entropy, the paper's objective
- ``metrics``: Recall@K, MAP@R, R-precision, NMI (exact, chunked), attention's same-class share
- ``config``, ``presets``: the settings of a run, and the named ones
- ``evaluation``, ``callbacks``, ``checkpoints``: measuring, watching and saving a run
- ``training``: the one training loop
- ``run_store``, ``notebook``, ``viz``: what the notebooks use on top (cached runs, set-up, figures)

Imports point one way: data, models, losses, metrics first; then config, evaluation, callbacks,
checkpoints; then the loop; then the run store, viz and the command line.

Importing the package (or any module of it) changes nothing in the process: threads are pinned
by the entry points (``runtime.py`` says which, and how to change the count).
"""

__version__ = "0.1.0"
