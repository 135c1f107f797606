"""Where and how fast a run computes: CPU threads, seeds and the device.

**Threads: the one place they are documented.** Importing any module of the package changes
nothing: not torch's thread counts, not an environment variable. The entry points pin them by
calling :func:`pin_threads`: ``start()`` in the notebooks, the command line (``python -m
mpn_tutorial``), the test suite (``tests/conftest.py``) and the bench/ scripts. Why pin: CPU
results of torch (matrix products, reductions) depend on how work is split across threads, and two
processes that each use every core slow each other down many times over.

The count is ``$MPN_TUTORIAL_THREADS`` when set, else :data:`DEFAULT_THREADS` (2, or fewer on a
machine with fewer cores). To use 8 cores: ``MPN_TUTORIAL_THREADS=8 make lab`` (or ``export`` it
before starting Python). The Makefile sets 2, with which the committed notebook outputs were
produced; a run store entry records its thread count in its key (``run_store.cache_key``).

Settings that only say where or how fast a run computes (the device, data-loading workers...) are
declared so on their field (``settings.setting(..., machinery=True)``).
"""

from __future__ import annotations

import os
import random

from mpn_tutorial.errors import UsageError

THREADS_VARIABLE = "MPN_TUTORIAL_THREADS"
DEFAULT_THREADS = 2
# Native libraries read these when they first load; an entry point that pins threads before numba
# (UMAP) loads also exports them, so later-loaded libraries start with the same count.
LIBRARY_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def thread_count() -> int:
    """Number of CPU threads an entry point pins (see module docstring)."""
    value = os.environ.get(THREADS_VARIABLE)
    if value is None:
        return max(1, min(DEFAULT_THREADS, os.cpu_count() or 1))
    try:
        count = int(value)
    except ValueError:
        raise UsageError(f"{THREADS_VARIABLE}={value!r} is not a whole number; set it to e.g. 2") from None
    if count < 1:
        raise UsageError(f"{THREADS_VARIABLE}={count} must be at least 1")
    return count


def pin_threads(count: int | None = None) -> int:
    """Compute with ``count`` threads (default :func:`thread_count`) in torch and the native
    libraries; returns the count. For entry points only (module docstring)."""
    import torch

    count = thread_count() if count is None else count
    for name in LIBRARY_THREAD_VARIABLES:
        os.environ[name] = str(count)
    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # can only be set once per process, before any parallel work; harmless to skip
    try:  # BLAS pools already loaded (numpy's, scipy's) are limited at run time
        from threadpoolctl import threadpool_limits

        threadpool_limits(count)
    except ImportError:  # pragma: no cover - comes with scikit-learn
        pass
    return count


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (every entry point takes a seed)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto"):
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> torch.device."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
