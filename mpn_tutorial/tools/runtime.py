"""Where and how fast a run computes: CPU threads, seeds and the device.

**Threads.** Importing the package changes no thread count and no environment variable; the entry
points (``start()`` in the notebooks, the command line, ``tests/conftest.py``, bench/) call
:func:`pin_threads`. Why: CPU results of torch depend on how work is split across threads, and two
processes that each use every core slow each other down many times over. The count is
``$MPN_TUTORIAL_THREADS`` when set, else :data:`DEFAULT_THREADS` (2, or fewer on a machine with fewer
cores); the committed notebook outputs were produced with 2, and a stored run's key holds the count.
"""

from __future__ import annotations

import contextlib
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
    with contextlib.suppress(RuntimeError):  # can be set only once per process, before any parallel work
        torch.set_num_interop_threads(1)
    with contextlib.suppress(ImportError):  # BLAS pools already loaded (numpy's, scipy's) are limited at run time
        from threadpoolctl import threadpool_limits  # comes with scikit-learn

        threadpool_limits(count)
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
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
