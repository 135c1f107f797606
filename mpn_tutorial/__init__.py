"""mpn_tutorial: deep metric learning with message passing over the mini-batch.

A teaching re-implementation of Seidenschwarz, Elezi and Leal-Taixé, "Learning Intra-Batch
Connections for Deep Metric Learning" (ICML 2021). Modules, one concept each:

- ``data``: the offline glyph dataset, the four benchmark readers, the P×K batch sampler
- ``models``: backbones, :class:`~mpn_tutorial.models.MessagePassingLayer`, the full model
- ``losses``: contrastive, triplet (with mining), label-smoothed cross-entropy
- ``metrics``: Recall@K, MAP@R, R-precision, NMI (exact, chunked)
- ``training``: one training loop with callbacks and checkpoints
- ``viz``: figures and widget explorers for the notebooks
"""

from mpn_tutorial.runtime import set_library_thread_variables

# Before numpy/torch load their thread pools (see runtime.py for why).
set_library_thread_variables()

from mpn_tutorial.runtime import pin_threads  # noqa: E402

pin_threads()

__version__ = "0.1.0"
