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


class OutputExistsError(MgsvError):
    """An output file exists and ``--force`` was not given; nothing was written."""

    exit_code = 9


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first non-empty line of an exception's message (its class name when it has none),
    cut to ``limit`` characters: what a one-line report shows of a foreign error."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text[:limit] if limit else text
