"""The package's own errors: one family, like ``requests.RequestException`` or ``sklearn.exceptions``.

Every error the package raises on purpose derives from :class:`MPNTutorialError`, and each says
what was wrong and what would work. These (and argparse's) are the user's to fix: the command line
ends them with that one line and exit status 2. Anything else that reaches the command line is not
the user's fault: a full disk (``atomic.DiskFullError``) or an out-of-memory error is the machine's
(one line that says what was kept, exit 1), and every other exception is a bug (its traceback and
a line asking to report it, exit 1), whatever its type, a ``ValueError`` included.

Each class also derives from the built-in exception a caller would expect (``ValueError`` for a bad
setting, ``FileNotFoundError`` for a missing file), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class MPNTutorialError(Exception):
    """Base of the package's own errors: the message names the problem and the fix."""


class UsageError(MPNTutorialError, ValueError):
    """A setting, argument or input the package cannot use (a size of zero, heads that do not divide
    the embedding, a tensor of the wrong shape...)."""


class MissingFileError(MPNTutorialError, FileNotFoundError):
    """A file or folder the package needs (a checkpoint, a dataset, a study's results) is not there."""


class TrainingDiverged(MPNTutorialError, FloatingPointError):
    """The loss or the embeddings became NaN or infinite; the message says where and what to lower."""


class MachineError(Exception):
    """Not the user's fault and not a bug: the machine could not do what was asked (out of memory).
    Outside the family on purpose; the message says what happened and what was kept."""


__all__ = ["MPNTutorialError", "MachineError", "MissingFileError", "TrainingDiverged", "UsageError"]
