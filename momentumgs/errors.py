"""Errors that reach the user as one line (the CLI prints them and exits with code 2), and the one-line
text of an operating-system error."""

from __future__ import annotations

import errno
import os

EXIT_USER_ERROR = 2  # the CLI's exit status after a UserError
# a worker process whose collective failed because another worker is gone; its launcher names the lost one
EXIT_WORKER_LOST = 3


class UserError(Exception):
    """Bad input from the user: a file, an option or a config value. The message names it."""


class WorkerLost(UserError):
    """A collective failed: another worker process died or its machine became unreachable."""


class ConfigError(UserError):
    """An unknown key, a wrong type or a bad value in a config file or a `--set` override."""


class SceneError(UserError):
    """A COLMAP scene (or image) that cannot be read as asked."""


def os_error_text(exc: OSError) -> str:
    """`path: cause` of an operating-system error (disk full, permission denied, ...), on one line."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {cause}"
    if exc.filename is not None:
        return f"{exc.filename}: {cause}"
    return " ".join(cause.split())


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # the errors that freeing space fixes
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def with_path(exc: OSError, path: str | os.PathLike) -> OSError:
    """`exc`, naming `path` if it names no file (a failed write or fsync names none: "No space left on
    device" alone would not say where)."""
    if exc.filename is not None or exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path))
