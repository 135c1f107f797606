"""Writing a file so that readers only ever see the old version or the complete new one.

Caches (the glyph dataset) and checkpoints are written to a temporary file in the same folder,
flushed to disk, and renamed over the target in one step (``os.replace`` is atomic on POSIX and
Windows). A process killed mid-write leaves the previous file intact and, at worst, a stray
``*.partial`` file next to it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
