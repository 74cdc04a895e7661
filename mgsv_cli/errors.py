"""Typed errors of the mgsv library.

Library code raises these; the CLI turns each into a one-line message and the
exit code carried by its class (see the README's table of exit codes).
"""
from __future__ import annotations


class MgsvError(Exception):
    """Base of every error mgsv reports to a user. ``exit_code`` is what the CLI returns."""

    exit_code = 3


class UsageError(MgsvError):
    """The command line or an option value makes no sense."""

    exit_code = 2


class ConfigError(MgsvError):
    """A model config or user settings file is missing or malformed."""

    exit_code = 2


class DataError(MgsvError):
    """A dataset file (CSV, feature tensor) is missing, malformed or of the wrong shape."""

    exit_code = 4


class MediaError(MgsvError):
    """A video or audio file cannot be read, or ffmpeg failed on it."""

    exit_code = 5


class CheckpointError(MgsvError):
    """No usable checkpoint: missing, unreadable, or not matching its config."""

    exit_code = 6


class WeightsMissingError(MgsvError):
    """Pretrained encoder weights are not available (offline, or not downloaded)."""

    exit_code = 7


class IndexDatabaseError(MgsvError):
    """The music index database is missing, locked by another run, or unusable."""

    exit_code = 8


class DeviceMemoryError(MgsvError):
    """The GPU ran out of memory; the message names the option that lowers the batch (exit code 3)."""


class OutputExistsError(MgsvError):
    """An output file exists and ``--force`` was not given; nothing was written."""

    exit_code = 9


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message (its class name when it has none),
    cut to ``limit`` characters: what a one-line report shows of a foreign error."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text[:limit] if limit else text


class StorageError(MediaError):
    """A file or folder mgsv must write cannot be written: read-only file system, disk full,
    quota, name too long, I/O error, no permission. Exit code 5, like other media errors."""


# errno -> what a user should read; anything else falls back to the OS's own words.
_STORAGE_CAUSES = {
    "EROFS": "the file system is read-only",
    "ENOSPC": "no space left on device",
    "EDQUOT": "disk quota exceeded",
    "ENAMETOOLONG": "file name too long",
    "EIO": "input/output error (a failing disk or a dropped network share?)",
    "EACCES": "permission denied",
    "EPERM": "operation not permitted",
    "EFBIG": "file too large for this file system (or a file size limit)",
    "ENOENT": "no such file or folder",
    "ENOTDIR": "a part of the path is not a folder",
    "EISDIR": "it is a folder",
}


def os_error_cause(exc: BaseException) -> str:
    """A short, plain cause for an OSError ("the file system is read-only", ...)."""
    import errno

    name = errno.errorcode.get(getattr(exc, "errno", None) or -1, "")
    return _STORAGE_CAUSES.get(name) or (getattr(exc, "strerror", None) or first_line(exc))


def storage_error(action: str, path, exc: BaseException) -> StorageError:
    """``StorageError("cannot <action> <path>: <cause>")`` for an OSError met while writing."""
    return StorageError(f"cannot {action} {path}: {os_error_cause(exc)}")
