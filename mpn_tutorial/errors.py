"""The package's errors: one family, like ``requests.RequestException`` or ``sklearn.exceptions``.

Every error the package raises on purpose derives from :class:`MPNTutorialError` and says what
happened and what would work. Three branches say whose it is (the command line's exit status):
:class:`UsageError`, the user's to fix (2); :class:`MachineError`, the machine's, out of memory or a
full disk (1); :class:`FetchError`, a failed download (1). Anything else is a bug. Each class also
derives from the built-in exception a caller would expect (``ValueError`` for a bad setting,
``FileNotFoundError`` for a missing file, ``OSError`` for a full disk).
"""

from __future__ import annotations


class MPNTutorialError(Exception):
    """Base of the package's own errors: the message names the problem and the fix."""


# -- the user's to fix (exit 2) ------------------------------------------------------------------
class UsageError(MPNTutorialError, ValueError):
    """A setting, argument or input the package cannot use (a size of zero, a tensor of the wrong shape...)."""


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder the package needs (a checkpoint, a study's results) is not there."""


class CheckpointError(UsageError):
    """A file is not a readable checkpoint of this package, or not one this run can use."""


class DatasetError(UsageError):
    """A benchmark's files are malformed or unreadable; the message names the file and the fix."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A benchmark's root folder, index file or image is missing; the message says how to get it."""


class ManualDownloadRequired(UsageError):
    """A dataset cannot be downloaded automatically; the message says what to download by hand, and where."""


class TrainingDiverged(UsageError, FloatingPointError):
    """The loss or the embeddings became NaN or infinite; the message says where and what to lower."""


# -- the machine's (exit 1) ----------------------------------------------------------------------
class MachineError(MPNTutorialError):
    """The machine could not do what was asked (out of memory, a full disk); the message says what was kept."""


class DiskFullError(MachineError, OSError):
    """The disk filled up while writing a file; the previous version of the file is intact."""


# -- a download that failed (exit 1) -------------------------------------------------------------
class FetchError(MPNTutorialError, RuntimeError):
    """Obtaining a dataset failed; the message says what failed and what to retry."""


class DownloadError(FetchError):
    """An HTTP download failed (unreachable server, HTTP error status, unexpected answer)."""


class DownloadInterrupted(DownloadError):
    """The connection broke mid-file; the bytes so far stay in ``.partial`` for the next call."""


class ChecksumMismatchError(FetchError):
    """A file's SHA-256 differs from the registry's."""


class UnsafeArchiveError(FetchError):
    """An archive member would be written (or link) outside the extraction folder."""


class WeightsUnavailableError(FetchError, FileNotFoundError):
    """A pretrained backbone's ImageNet weights could not be downloaded; the message says how to get them."""
