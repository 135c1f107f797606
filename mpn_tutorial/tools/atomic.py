"""Writing a file so that readers only ever see the old version or the complete new one: a temporary
file in the same folder, flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX
and Windows). A process killed mid-write leaves the previous file intact, and at worst a stray ``*.partial``.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from mpn_tutorial.errors import DiskFullError


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``. A full disk
    raises :class:`DiskFullError`, which names the file and the free space."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            previous = "the previous version of it is intact" if path.exists() else "nothing was written"
            raise DiskFullError(error.errno, f"no space left on the device while writing {path} "
                                f"({free / 2**20:.1f} MiB free in {path.parent}); {previous}. Free some space "
                                "and run the command again") from None
        raise
    return path
