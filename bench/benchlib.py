"""Shared helpers of the bench/ scripts: a machine header and interleaved median timing.

Why interleaved: the machine these scripts run on is shared (other jobs come and go), so the
variants being compared are timed round-robin, one call of each per repeat. A load spike then
slows every variant of that repeat alike, and the *ratio* of medians stays meaningful even when
absolute seconds drift. The scripts print ratios; seconds are context, never a pass/fail.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mpn_tutorial.tools.runtime import pin_threads

pin_threads()  # a bench script is an entry point (mpn_tutorial/runtime.py): MPN_TUTORIAL_THREADS, default 2

REPO_ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU model name as ``lscpu`` reports it (falls back to ``platform.processor()``)."""
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def print_header(title: str, extra: dict[str, object] | None = None) -> None:
    """Print what a reader needs to compare figures across machines."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    lines = {
        "benchmark": title,
        "date": datetime.date.today().isoformat(),
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical cores",
        "torch": f"{torch.__version__} ({torch.get_num_threads()} threads)",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available",
        "python": platform.python_version(),
        "load average (1 min)": load[0],
    }
    lines.update(extra or {})
    print("#" * 72)
    for key, value in lines.items():
        print(f"# {key}: {value}")
    print("#" * 72, flush=True)


def time_interleaved(
    functions: dict[str, Callable[[], object]],
    warmup: int = 2,
    repeats: int = 7,
    min_repeats: int = 3,
    budget_s: float | None = None,
    synchronize: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin (see the module docstring).

    ``warmup`` untimed rounds first (allocator, thread pool, lazy initialisation). Then up to
    ``repeats`` timed rounds; with ``budget_s``, rounds stop once that many seconds were spent and
    at least ``min_repeats`` rounds ran (so slow variants still finish in bounded time).
    ``synchronize`` (e.g. ``torch.cuda.synchronize``) is called before and after each timed call,
    since GPU work is asynchronous.
    """
    sync = synchronize or (lambda: None)
    for _ in range(warmup):
        for function in functions.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    started = time.perf_counter()
    for round_index in range(repeats):
        for name, function in functions.items():
            sync()
            start = time.perf_counter()
            function()
            sync()
            times[name].append(time.perf_counter() - start)
        spent = time.perf_counter() - started
        if budget_s is not None and round_index + 1 >= min_repeats and spent > budget_s:
            break
    return {name: statistics.median(values) for name, values in times.items()}


def print_ratio(name: str, label: str, value: float) -> None:
    """One comparable result line: ``name: label: value``."""
    print(f"{name}: {label}: {value:.3f}", flush=True)
