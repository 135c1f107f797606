"""The one place that pins CPU threads, seeds random number generators and picks the device.

Why pin threads: CPU results of torch (matrix products, reductions) depend on how work is split
across threads, and two processes that each use every core slow each other down many times over.
Tests, notebooks and the command line all import the package, and importing it calls
:func:`pin_threads`, so every entry point computes with the same number of threads.

The count comes from the environment variable ``MPN_TUTORIAL_THREADS`` (default: 2, or fewer when
the machine has fewer cores). The committed notebook outputs were produced with 2 threads.
"""

from __future__ import annotations

import os
import random

THREADS_VARIABLE = "MPN_TUTORIAL_THREADS"
DEFAULT_THREADS = 2
# Native libraries read these once, when they are first loaded, so they must be set before
# numpy / torch / numba initialise their thread pools.
_LIBRARY_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def thread_count() -> int:
    """Number of CPU threads the package computes with (see module docstring)."""
    value = os.environ.get(THREADS_VARIABLE)
    if value is None:
        return max(1, min(DEFAULT_THREADS, os.cpu_count() or 1))
    try:
        count = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_VARIABLE}={value!r} is not a whole number; set it to e.g. 2") from None
    if count < 1:
        raise ValueError(f"{THREADS_VARIABLE}={count} must be at least 1")
    return count


def set_library_thread_variables(count: int | None = None) -> int:
    """Export the thread count to OpenMP / MKL / OpenBLAS / numba before they load."""
    count = thread_count() if count is None else count
    for name in _LIBRARY_VARIABLES:
        os.environ[name] = str(count)
    return count


def pin_threads(count: int | None = None) -> int:
    """Use ``count`` threads in torch and the native libraries; returns the count in effect."""
    count = set_library_thread_variables(count)
    import torch

    torch.set_num_threads(count)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # can only be set once per process, before any parallel work; harmless to skip
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
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} was asked for but CUDA is not available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
