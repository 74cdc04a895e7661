"""Where mgsv keeps things on disk.

Every location lives under the platformdirs user directories unless ``MGSV_HOME``
is set, in which case everything (data, cache, config) goes below that one folder.
"""
from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from mgsv_cli.errors import OutputExistsError, storage_error

APP_NAME = "mgsv"


def _home() -> Path | None:
    value = os.environ.get("MGSV_HOME")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    """Runs, the music index and remembered suggestions."""
    home = _home()
    if home is not None:
        return home / "data"
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME))


def cache_dir() -> Path:
    """Packed dataset caches and per-checkpoint token caches (safe to delete)."""
    home = _home()
    if home is not None:
        return home / "cache"
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP_NAME))


def config_dir() -> Path:
    """The user's settings file (``config.toml``)."""
    home = _home()
    if home is not None:
        return home / "config"
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


def runs_dir() -> Path:
    """Default parent of training run folders."""
    return data_dir() / "runs"


def default_index_path() -> Path:
    """Default SQLite music index."""
    return data_dir() / "index.sqlite"


def suggestions_dir() -> Path:
    """Where the last suggestion per video is remembered for ``mgsv render``."""
    return data_dir() / "suggestions"


def atomic_write_bytes(path: Path, data: bytes, *, overwrite: bool = True, private: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file beside it and a rename, so a
    reader never sees half a file; the temporary file is removed on any failure, and a
    failing removal never hides the first error.

    The file gets the permissions of any file the user makes (``0o666`` less the umask, or
    what the folder's default ACL says), like renders and every other output; ``private``
    keeps it to its owner (``0o600``: a file holding a secret). ``overwrite=False`` refuses
    (``OutputExistsError``) a ``path`` that appeared while writing. OS errors (read-only,
    disk full, ...) come out as ``StorageError``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path, 0o600 if private else 0o666)
    except OSError as exc:
        raise storage_error("write", path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # a crash right after the rename must not leave an empty file
        if not overwrite and path.exists():
            raise OutputExistsError(f"{path} exists: use --force to replace it")
        os.replace(tmp, path)
    except BaseException as exc:
        remove_quietly(Path(tmp))
        if isinstance(exc, OSError):
            raise storage_error("write", path, exc) from None
        raise


def _create_temporary(path: Path, mode: int) -> tuple[int, str]:
    """Create a new hidden file beside ``path``: ``(descriptor, name)``.

    Not ``tempfile.mkstemp``, which always makes 0600: the kernel applies the umask (or a
    default ACL) to ``mode`` here, as for any file the user creates, with no need to read
    the umask (``os.umask`` can only be read by setting it, racing other threads).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, mode), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def atomic_write_text(path: Path, text: str, *, overwrite: bool = True, private: bool = False) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite, private=private)


def remove_quietly(path: Path) -> None:
    """Remove a temporary file if it is there; a failure (read-only, I/O error) is ignored
    because the caller is already reporting the error that matters."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
