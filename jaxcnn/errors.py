"""The user-facing error types: anything raised as a JaxcnnError is the user's to fix."""

from collections.abc import Sequence


def listing(items: Sequence[str], limit: int, sep: str = ", ") -> str:
    """The first `limit` of `items` joined by `sep`, then "and N more" for the rest: how
    a message names a bounded number of paths, files, tensors or differences
    ("a, b and 3 more"; with sep "; ": "a; b; and 3 more")."""
    more = len(items) - limit
    joiner = " " if sep == ", " else sep
    return sep.join(items[:limit]) + (f"{joiner}and {more} more" if more > 0 else "")


class JaxcnnError(Exception):
    """A usage, config or data problem. The CLI prints the message and exits 2."""


class SpecError(JaxcnnError, ValueError):
    """A model or run spec is malformed or describes an impossible network."""


class DataError(JaxcnnError):
    """A dataset cannot be found, built or matched to the model."""


class CheckpointError(JaxcnnError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


class TrainingError(JaxcnnError):
    """Training cannot go on (for example the loss became NaN or Inf)."""


class Interrupted(JaxcnnError):
    """A signal stopped training after a checkpoint was saved; rerunning resumes.

    `exit_code` is 128 + the signal number (143 for SIGTERM, 130 for SIGINT), the status
    schedulers and shells expect from a job that was stopped rather than finished.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class DiskFull(JaxcnnError):
    """The disk filled while a run wrote its files; what was complete before is intact.

    Freeing space and running the same command again resumes from the last complete
    checkpoint.
    """


_ENOSPC_TEXT = ("No space left on device", "os_error_code='28'", "Disk quota exceeded")


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or an error it was raised from) says the disk is full.

    Python's own writes raise `OSError` with errno ENOSPC or EDQUOT; orbax's writes go
    through TensorStore, whose errors carry the OS message in their text.
    """
    import errno

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in _ENOSPC_TEXT):
            return True
        error = error.__cause__ or error.__context__
    return False
